"""The trainer's command line: ``tbps synth``, ``synth-footage``, ``train``, ``eval``, ``ablate`` and ``data``
(``check``: the dataset doctor; ``convert``: between annotation layouts). The library modules it calls
speak Python; the flags live here."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tbps_runtime.clikit import (
    TbpsCommand, TbpsGroup, device_option, json_option, output_option, quiet_option, setup_logging, threads_option,
    user_errors_exit_2,
)
from tbps_runtime.climessages import in_flags
from tbps_runtime.errors import ConfigError
from tbps_runtime.machine import cpu_model
from tbps_runtime.paths import printable
from tbps_runtime.synth import DEFAULT_IDS, DEFAULT_PARTS_IDS
from tbps_runtime.threads import pinned_threads
from tbps_train.ablate import ROWS as ABLATION_ROWS
from tbps_train.config import PRESETS, RunConfig, apply_overrides, load_preset
from tbps_train.data.convert.reading import FORMATS
from tbps_train.data.doctor import DEFAULT_IMAGES_SAMPLE
from tbps_train.data.formats import DATASETS, LAYOUTS

if TYPE_CHECKING:
    from tbps_train.data.convert.dataset import Conversion

logger = logging.getLogger(__name__)

DATASET_CHOICE = click.Choice(DATASETS)
_DATASET_HELP = ("The annotations' layout: cuhk-pedes, icfg-pedes or rstpreid (the benchmarks' files), or csv "
                 "(your own captions: one row per image, person_id, caption[, split, camera]).")
_ROOT_HELP = ("Dataset root directory; for csv, the .csv or .jsonl file, or the folder holding annotations.csv "
              "or annotations.jsonl (image paths are relative to its folder).")


@click.command(cls=TbpsCommand, short_help="Write the synthetic person dataset (--parts: part twins).")
@output_option("Directory to write (CUHK-PEDES layout).", file_okay=False, aliases=("--out",))
@click.option("--ids", default=None, type=click.IntRange(min=3),
              help=f"Number of identities [default: {DEFAULT_IDS}, or 3000 with --parts].")
@click.option("--images-per-id", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--parts", is_flag=True,
              help="Write the part-sensitive set instead: more and smaller parts (glasses, belt, strap), swap "
                   "twins (same colours on other parts) and one-part twins, captions that tell twins apart, "
                   "and twins.json, a val/test query split for checking that a model binds colours to parts.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing dataset at --out; only one tbps synth wrote (with its .tbps-synth.json "
                   "and nothing else) is ever replaced.")
@quiet_option()
@user_errors_exit_2
def synth_command(output: str, ids: int | None, images_per_id: int, seed: int, parts: bool, overwrite: bool,
                  quiet: bool) -> None:
    """Write the procedural synthetic person dataset (CUHK-PEDES layout)."""
    quiet = setup_logging(quiet)
    if parts:
        from tbps_runtime.synth.parts import generate_parts

        path = generate_parts(output, ids=ids or DEFAULT_PARTS_IDS, images_per_id=images_per_id, seed=seed,
                              overwrite=overwrite, progress=not quiet)
    else:
        from tbps_runtime.synth.dataset import generate

        path = generate(output, ids=ids or DEFAULT_IDS, images_per_id=images_per_id, seed=seed,
                        overwrite=overwrite, progress=not quiet)
    click.echo(str(path))


@click.command(cls=TbpsCommand, short_help="Write synthetic camera footage (H.264) with its true boxes.")
@output_option("Directory to write (camN.mp4, camN.gt.txt, footage.json).", file_okay=False)
@click.option("--cameras", default=2, show_default=True, type=int, help="Number of cameras (1-16).")
@click.option("--seconds", default=8.0, show_default=True, type=float,
              help="Length of each camera's clip (>= 2 unless --still).")
@click.option("--fps", default=10.0, show_default=True, type=float, help="Frames per second (0.01-240).")
@click.option("--size", default=(640, 360), show_default=True, type=(int, int), metavar="WIDTH HEIGHT",
              help="Frame size in pixels (even numbers).")
@click.option("--people", default=6, show_default=True, type=int, help="Number of people (1-200).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--start", default="2026-03-02T14:00:00+00:00", show_default=True,
              help="When the cameras start: ISO-8601 with a time zone (written as each video's creation_time).")
@click.option("--outfits", default="synthetic", show_default=True, type=click.Choice(["synthetic", "solid"]),
              help="synthetic: the dataset's people and captions; solid: each person in one pure colour.")
@click.option("--still", is_flag=True, help="People stand still for the whole clip (constant boxes).")
@click.option("--overwrite", is_flag=True,
              help="Replace earlier footage at --output; only footage tbps synth-footage wrote (its footage.json "
                   "and nothing else) is ever replaced.")
@quiet_option()
@user_errors_exit_2
def footage_command(output: str, cameras: int, seconds: float, fps: float, size: tuple[int, int], people: int,
                    seed: int, start: str, outfits: str, still: bool, overwrite: bool, quiet: bool) -> None:
    """Write synthetic camera footage (H.264) with MOT-style ground truth, for tbps ingest."""
    from tbps_runtime.synth.footage import generate_footage

    quiet = setup_logging(quiet)
    path = generate_footage(output, cameras=cameras, seconds=seconds, fps=fps, size=size, people=people, seed=seed,
                            start=start, outfits=outfits, still=still, overwrite=overwrite, progress=not quiet)
    click.echo(str(path))


def _set_threads(threads: int | None) -> None:
    """--threads, or the policy's count now (tbps_runtime.threads), as PyTorch's intra-op threads."""
    import torch

    from tbps_runtime.threads import choose_threads

    torch.set_num_threads(choose_threads(threads).threads)


_TRAIN_THREADS_HELP = ("PyTorch intra-op threads (default: the cores other processes leave idle, re-checked "
                       "during training; pin it for bit-identical reruns).")


def _training_options(command):
    """Options shared by tbps train and tbps ablate."""
    options = [
        click.option("--dataset", required=True, type=DATASET_CHOICE, help=_DATASET_HELP),
        click.option("--root", required=True, type=click.Path(), help=_ROOT_HELP),
        click.option("--preset", default="demo", show_default=True, type=click.Choice(PRESETS)),
        click.option("--epochs", type=click.IntRange(min=1)),
        click.option("--batch-size", type=click.IntRange(min=2)),
        click.option("--lr", type=float),
        click.option("--seed", type=int),
        device_option(),
        threads_option(_TRAIN_THREADS_HELP),
        click.option("--image-backbone", help="resnet50, vit_b_16, resnet_small, ... (overrides the preset)"),
        click.option("--text-backbone", help="'minilm', 'tiny' or a local BERT directory (e.g. bert-base-uncased)"),
        click.option("--cache-image-features", is_flag=True, default=None,
                     help="Fast head training: freeze the image backbone and run it once per image and its "
                          "mirror image; trains everything above the backbones, without fine-tuning the "
                          "backbone as the paper does."),
        quiet_option("No progress bars or per-epoch lines."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _config_from(preset: str, epochs, batch_size, lr, seed, device, image_backbone, text_backbone,
                 cache_image_features=None) -> RunConfig:
    config = load_preset(preset)
    config = apply_overrides(config, "train", epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                             cache_image_features=True if cache_image_features else None)
    return apply_overrides(config, "model", image_backbone=image_backbone, text_backbone=text_backbone)


@click.command(cls=TbpsCommand, short_help="Train the model on a dataset into one checkpoint file.")
@_training_options
@output_option("Checkpoint to write (m.pt).", dir_okay=False)
@click.option("--resume", is_flag=True,
              help="Continue the run saved in --output with its own config; --epochs N extends it to N epochs.")
@click.option("--init", "init", type=click.Path(dir_okay=False), metavar="CKPT",
              help="Fine-tune: start a new run from the weights, model settings and tokenizer of CKPT (a tbps "
                   "checkpoint), with a new identity classifier for this dataset's people. --preset gives the "
                   "training settings; model options may not change the weights' shapes. Not with --resume.")
@click.option("--image-weights", help="ImageNet state dict for the image backbone (torchvision names); "
              "'packaged' = MobileNetV2's offline weights, 'none' = random init (default: the preset's).")
@click.option("--eval-every", type=click.IntRange(min=0),
              help="Epochs between validation runs (0: never; default: the preset's).")
@click.option("--margin", type=float, help="Ranking margin alpha (default 0.2).")
@click.option("--no-coarse", is_flag=True, help="Ablation: drop the coarse embeddings C (Table 2).")
@click.option("--no-fine", is_flag=True, help="Ablation: drop the fine embeddings F (Table 2).")
@click.option("--fine-loss", type=click.Choice(["cmr", "ranking"]), help="Loss on F: CMR (Eq. 12) or plain ranking (Eq. 9).")
@click.option("--cmr-on-coarse", is_flag=True, help="Ablation: CMR on the coarse embeddings too (Table 3).")
@click.option("--separate-decoders", is_flag=True, help="Ablation: one decoder per modality (Table 4).")
@click.option("--num-coarse", type=click.IntRange(min=1), help="D, the number of shared tokens (default 4).")
@click.option("--image-size", type=(click.IntRange(min=16), click.IntRange(min=16)), help="Input HEIGHT WIDTH.")
@click.option("--image-lr-scale", type=float, help="Image backbone lr as a fraction of --lr (paper: 0.1).")
@click.option("--id-classifier", type=click.Choice(["cosine", "linear"]),
              help="Eq. 7's classifier: scaled cosine (default) or the printed linear e W_ID.")
@click.option("--token-init", type=click.Choice(["normal", "orthogonal"]),
              help="Initial decoder tokens: N(0, 0.02^2) (default) or orthogonal (not in the paper).")
@click.option("--token-init-std", type=float, help="Scale of the initial decoder tokens (default 0.02).")
@click.option("--ranking-reduction", type=click.Choice(["sum", "mean"]),
              help="Eq. 9/12 over the batch: mean (default; see docs/model.md) or summed as printed.")
@click.option("--warmup-epochs", type=click.IntRange(min=0), help="Linear lr warm-up epochs (not in the paper; 0).")
@click.option("--ranking-warmup-epochs", type=click.IntRange(min=0),
              help="Epochs whose Eq. 9/12 hinges are averaged over all negatives before the hardest one is "
                   "used (not in the paper; VSE-infinity's warm-up; keeps summed Eq. 9/12 from collapsing).")
@click.option("--no-query-bias", is_flag=True, help="Hold the decoder's query bias at zero (Eq. 4 has none).")
@user_errors_exit_2
def train_command(dataset, root, preset, epochs, batch_size, lr, seed, device, threads, image_backbone,
                  text_backbone, cache_image_features, quiet, output, resume, init, image_weights, eval_every,
                  margin, no_coarse, no_fine, fine_loss, cmr_on_coarse,
                  separate_decoders, num_coarse, image_size, image_lr_scale, id_classifier, token_init,
                  token_init_std, ranking_reduction, warmup_epochs, ranking_warmup_epochs, no_query_bias) -> None:
    """Train the model on a dataset and write a self-contained checkpoint.

    On several GPUs or machines, start it with torchrun (data parallel, one
    process per GPU, --batch-size is the global batch):

    \b
        torchrun --nproc_per_node 4 --no-python tbps train --device cuda ...
    """
    from tbps_train.checkpoint import check_checkpoint_output
    from tbps_train.text import quiet_transformers
    from tbps_train.train import InitSource, train

    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    quiet = setup_logging(quiet or not main_process)
    quiet_transformers()
    if init is not None and resume:
        raise ConfigError("give --resume (continue the run in --output) or --init CKPT (fine-tune CKPT), not both")
    if init is not None and image_weights is not None:
        raise ConfigError("--init CKPT gives the image backbone CKPT's weights: drop --image-weights")
    config = _config_from(preset, epochs, batch_size, lr, seed, device, None, None, cache_image_features)
    config = apply_overrides(config, "train", eval_every=eval_every, image_backbone_lr_scale=image_lr_scale,
                             warmup_epochs=warmup_epochs)
    # Only the model options given on the command line: with --init the rest is the checkpoint's.
    model_options = dict(image_backbone=image_backbone, text_backbone=text_backbone,
                         use_coarse=False if no_coarse else None, use_fine=False if no_fine else None,
                         shared_decoder=False if separate_decoders else None, num_coarse=num_coarse,
                         image_size=image_size, id_classifier=id_classifier, token_init=token_init,
                         token_init_std=token_init_std, decoder_query_bias=False if no_query_bias else None)
    source = InitSource.load(init) if init is not None else None
    if source is not None:
        config = dataclasses.replace(config, model=source.config.model)
    config = apply_overrides(config, "model", **model_options)
    config = apply_overrides(config, "loss", margin=margin, fine_loss=fine_loss,
                             cmr_on_coarse=True if cmr_on_coarse else None, ranking_reduction=ranking_reduction,
                             ranking_warmup_epochs=ranking_warmup_epochs)
    check_checkpoint_output(output)  # never over a dataset's annotations, an image or anybody's data
    record = train(config, dataset, root, output, resume=resume, image_weights=image_weights, progress=not quiet,
                   resume_epochs=epochs, threads=threads, init=source)
    if not main_process:
        return
    if "val" in record:
        click.echo(_metrics_line(record["val"], "val"), err=True)
    click.echo(str(output))


@click.command(cls=TbpsCommand, short_help="R@1/5/10, mAP and mINP of a checkpoint on a dataset split.")
@click.option("--ckpt", required=True, type=click.Path(), help="Checkpoint written by tbps train.")
@click.option("--dataset", required=True, type=DATASET_CHOICE, help=_DATASET_HELP)
@click.option("--root", required=True, type=click.Path(), help=_ROOT_HELP)
@click.option("--split", default="test", show_default=True)
@device_option()
@threads_option("PyTorch intra-op threads (default: the cores other processes leave idle).")
@json_option("Print one JSON object on stdout.")
@click.option("--per-slot", is_flag=True,
              help="Also R@1 of each slot and slot group alone, and how alike the decoder tokens are.")
@user_errors_exit_2
def eval_command(ckpt: str, dataset: str, root: str, split: str, device: str | None, threads: int | None,
                 as_json: bool, per_slot: bool) -> None:
    """Text-to-image R@1/5/10, mAP and mINP of a checkpoint on a split.

    With --per-slot: R@1 of Eq. 14 restricted to the global slot, each
    coarse and fine slot, each group and all K; and the mean pairwise cosine
    of the decoder tokens' attention maps and embeddings (near 1 = collapsed).
    """
    from tbps_runtime.model.tokenizer import load_tokenizer
    from tbps_train.checkpoint import load_checkpoint, model_from_checkpoint
    from tbps_train.data.readers import read_split
    from tbps_train.distributed import check_device
    from tbps_train.evaluate import evaluate
    from tbps_train.text import quiet_transformers

    setup_logging(quiet=as_json)
    quiet_transformers()
    _set_threads(threads)
    device = "cpu" if device is None else device  # --device "" is a device name to check, not "none given"
    check_device(device)
    payload = load_checkpoint(ckpt)
    model, config = model_from_checkpoint(payload)
    records = read_split(dataset, root, split)
    tokenizer = load_tokenizer(payload["tokenizer_json"], config.model.max_text_length)
    from tbps_train.train import twin_subsets

    metrics = evaluate(model.to(device), tokenizer, records, device=device, progress=not as_json,
                       per_slot=per_slot, query_subsets=twin_subsets(dataset, Path(root), split, records))
    if as_json:
        click.echo(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}))
        return
    click.echo(_metrics_line(metrics, f"{dataset} {split}"))
    if per_slot:
        click.echo("R@1 by slot: " + "  ".join(f"{k} {v:.2f}" for k, v in metrics["per_slot"].items()))
        click.echo("token cosine: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics["token_cosine"].items()))
        click.echo("token query cosine: " + "  ".join(f"{k} {v:.3f}"
                                                      for k, v in metrics["token_query_cosine"].items()))
    for name, subset in metrics.get("subsets", {}).items():
        click.echo(_metrics_line(subset, f"{name} split ({subset['queries']} captions)"))
        if per_slot:
            click.echo(f"{name} R@1 by slot: " + "  ".join(f"{k} {v:.2f}" for k, v in subset["per_slot"].items()))


def _metrics_line(metrics: dict[str, float], label: str) -> str:
    return (f"{label}: R@1 {metrics['r1']:.2f}  R@5 {metrics['r5']:.2f}  R@10 {metrics['r10']:.2f}  "
            f"mAP {metrics['map']:.2f}  mINP {metrics['minp']:.2f}")


@click.command(cls=TbpsCommand, short_help="Train and evaluate the paper's ablation rows (Tables 2-4).")
@_training_options
@output_option("Directory for the runs' checkpoints and ablation.json.", required=False, file_okay=False,
               default="runs/ablation", aliases=("--out-dir",))
@click.option("--rows", "row_spec", default="table2", show_default=True,
              help="table2, extra (Table 3, Table 4, D = 2/6), diag (the full model with one setting changed "
                   "each), all, or comma-separated row names: " + ", ".join(row.slug for row in ABLATION_ROWS) + ".")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds, e.g. 0,1,2.")
@user_errors_exit_2
def ablate_command(dataset, root, preset, epochs, batch_size, lr, seed, device, threads, image_backbone,
                   text_backbone, cache_image_features, quiet, output, row_spec, seeds) -> None:
    """Train and evaluate the paper's ablation rows (Tables 2-4) over seeds: mean ± std per row.

    Each run keeps its last epoch and is evaluated on the test split once;
    validation figures come from training. Finished runs are reused, and two
    processes may share -o DIR (e.g. one per seed, --threads 1 each).
    """
    from tbps_train.ablate import markdown_table, run_ablation, select_rows, write_summary
    from tbps_train.data.readers import read_split
    from tbps_train.text import quiet_transformers

    quiet = setup_logging(quiet)
    quiet_transformers()
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError as e:
        raise ConfigError(f"--seeds must be comma-separated integers, not {seeds!r}") from e
    if seed is not None or not seed_list:
        raise ConfigError("give tbps ablate its seeds as --seeds 0,1,2")
    config = _config_from(preset, epochs, batch_size, lr, None, device, image_backbone, text_backbone,
                          cache_image_features)
    meta = {"dataset": dataset, "preset": preset, "selection": "last epoch",
            "test_evaluated": "once per run, at the end", "machine": cpu_model(),
            "threads": threads or pinned_threads() or "policy"}
    rows = select_rows(row_spec)
    for run_seed in seed_list:  # the configs and the dataset before the first run creates -o
        apply_overrides(config, "train", seed=run_seed).validate()
    read_split(dataset, root, "train", check_images=False)
    run_ablation(config, dataset, root, output, rows, seed_list, progress=not quiet, meta=meta,
                 threads=threads)
    document = write_summary(output, meta)
    click.echo(markdown_table(document["summary"]))


# ---- tbps data: check and convert ------------------------------------------------------

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
            skipped = in_flags(e)
    report = check_dataset(dataset, root, images_sample=images_sample, token_counter=counter,
                           token_skip_reason=skipped)
    click.echo(json.dumps(report.to_json()) if as_json else format_report(report))
    click.get_current_context().exit(report.status)


@data_group.command("convert", cls=TbpsCommand, short_help="Convert annotations between dataset layouts.")
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
    from tbps_train.data.convert.dataset import convert_dataset

    quiet = setup_logging(quiet)
    conversion = convert_dataset(from_format, to_format, input_path, root, images=images, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(conversion.to_json(), indent=2))
    elif not quiet:
        click.echo("\n".join(_summary_lines(conversion)))


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
