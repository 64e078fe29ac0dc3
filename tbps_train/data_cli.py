"""``tbps data``: look after datasets on disk (``check``: the dataset doctor)."""

from __future__ import annotations

import json

import click

from tbps_runtime.cli.support import TbpsCommand, TbpsGroup, json_option, setup_logging, user_errors_exit_2
from tbps_train.config import PRESETS
from tbps_train.data.doctor import DEFAULT_IMAGES_SAMPLE
from tbps_train.data.formats import DATASETS


@click.group(cls=TbpsGroup, name="data")
def data_group() -> None:
    """Check dataset roots before training on them."""


@data_group.command("check", cls=TbpsCommand)
@click.option("--dataset", required=True, type=click.Choice(DATASETS), help="The layout to check the root against.")
@click.option("--root", required=True, type=click.Path(), help="Dataset root directory.")
@json_option("Print the report as one JSON document on stdout.")
@click.option("--images-sample", default=DEFAULT_IMAGES_SAMPLE, show_default=True, type=click.IntRange(min=0), metavar="N",
              help="Images to decode (a seeded sample; 0 = all). Every image's existence and size is checked.")
@click.option("--token-limit", type=click.IntRange(min=1), metavar="N",
              help="Count captions longer than N whitespace words (when the preset's tokenizer cannot load).")
@click.option("--preset", type=click.Choice(PRESETS),
              help="Count captions the preset's tokenizer truncates at its max_text_length [default: demo].")
@user_errors_exit_2
def check_command(dataset: str, root: str, as_json: bool, images_sample: int, token_limit: int | None,
                  preset: str | None) -> None:
    """Report every problem of a dataset root, grouped, with what to do.

    Finds the annotation file (or says what is there instead and the command
    that converts it), compares each split with the paper's published figures,
    checks that every image exists and is not empty, decodes a sample of them,
    and looks for identities shared between splits, empty captions, one caption
    for several people and captions longer than the model reads.

    \b
    Exit status:
      0  clean
      1  warnings only: tbps can train on it, but look at the warnings
      2  unusable: tbps train/eval would refuse it or fail on it (the report says why);
         a missing root or a bad option is one 'error:' line, as for every command
    """
    from tbps_runtime.errors import ConfigError
    from tbps_train.data.doctor import check_dataset, format_report, preset_token_counter, word_counter

    setup_logging(quiet=as_json)
    if token_limit is not None and preset is not None:
        raise ConfigError("give --token-limit N (whitespace words) or --preset NAME (its tokenizer), not both")
    counter, skipped = None, None
    if token_limit is not None:
        counter = word_counter(token_limit)
    else:
        try:
            counter = preset_token_counter(preset or "demo")
        except ConfigError as e:  # the report says the check was skipped, and why
            skipped = str(e)
    report = check_dataset(dataset, root, images_sample=images_sample, token_counter=counter,
                           token_skip_reason=skipped)
    click.echo(json.dumps(report.to_json()) if as_json else format_report(report))
    click.get_current_context().exit(report.status)


def _add_convert() -> None:
    from tbps_train.data.convert.command import convert_command

    data_group.add_command(convert_command)


_add_convert()
