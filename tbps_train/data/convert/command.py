"""``tbps data convert``: the command, its text summary and the doctor's verdict on the result."""

from __future__ import annotations

import json

import click

from tbps_runtime.cli.support import TbpsCommand, json_option, quiet_option, setup_logging, user_errors_exit_2
from tbps_runtime.paths import printable
from tbps_train.data.convert.dataset import Conversion, convert_dataset
from tbps_train.data.convert.reading import FORMATS
from tbps_train.data.formats import DATASETS, LAYOUTS

__all__ = ["convert_command"]


def _doctor_hint(conversion: Conversion) -> str | None:
    """The dataset doctor's verdict on what was written (a layout tbps reads), and the command for its report."""
    if conversion.to_format not in DATASETS:
        return None
    from tbps_train.data.doctor import check_dataset

    command = f"tbps data check --dataset {conversion.to_format} --root {conversion.root}"
    if conversion.images_found is None:
        return f"images not linked yet: then check it: {command}"
    report = check_dataset(conversion.to_format, conversion.root, images_sample=100, token_counter=None,
                           token_skip_reason="not measured right after converting")
    return f"data check: {report.verdict} (the full report: {command})"


def _summary_lines(conversion: Conversion) -> list[str]:
    """The text report of a conversion: what was written, the per-split table, images, notes."""
    lines = [f"wrote {conversion.annotation} ({LAYOUTS[conversion.to_format].title}) from {conversion.input_path} "
             f"({conversion.from_format})",
             f"{'split':<6} {'entries':>9} {'images':>9} {'identities':>11} {'captions':>9}"]
    for split, c in conversion.splits.items():
        lines.append(f"{split:<6} {c.entries:>9,} {c.images:>9,} {c.identities:>11,} {c.captions:>9,}")
    lines += conversion.notes
    total = sum(c.images for c in conversion.splits.values())
    if conversion.images_found is not None:
        missing = total - conversion.images_found
        state = "all found" if not missing else f"{missing:,} of {total:,} missing"
        lines.append(f"images: {conversion.images_dir} ({state})")
    hint = _doctor_hint(conversion)
    return [printable(line) for line in lines + ([hint] if hint else [])]


@click.command("convert", cls=TbpsCommand)
@click.option("--from", "from_format", required=True, type=click.Choice(FORMATS), help="Layout of the input.")
@click.option("--to", "to_format", required=True, type=click.Choice(FORMATS), help="Layout to write.")
@click.option("--input", "input_path", required=True, type=click.Path(),
              help="The input's annotation file, or its folder (per-split layouts: the folder of their files).")
@click.option("--root", required=True, type=click.Path(file_okay=False),
              help="Dataset root to write: the annotation file(s) and imgs/ (a link, never a copy).")
@click.option("--images", type=click.Path(file_okay=False),
              help="Images folder to link ROOT/imgs to (default: the input's, when found).")
@click.option("--overwrite", is_flag=True, help="Replace existing annotation files (and an imgs link).")
@json_option()
@quiet_option()
@user_errors_exit_2
def convert_command(from_format: str, to_format: str, input_path: str, root: str, images: str | None,
                    overwrite: bool, as_json: bool, quiet: bool) -> None:
    """Convert dataset annotations between layouts (caption_all.json, reid_raw.json, ICFG-PEDES, RSTPReid,
    RaSa, TBPS-CLIP, APTM, CSV); the result is read back and summarised per split."""
    quiet = setup_logging(quiet)
    conversion = convert_dataset(from_format, to_format, input_path, root, images=images, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(conversion.to_json(), indent=2))
    elif not quiet:
        click.echo("\n".join(_summary_lines(conversion)))
