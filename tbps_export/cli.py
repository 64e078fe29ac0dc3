"""The exporter's command line: ``tbps export``, ``calibrate``, ``triton``, ``quickstart`` and ``trt-selfcheck``.

The modules they call (:mod:`~tbps_export.bundle_writer`, :mod:`~tbps_export.calibrate`,
:mod:`~tbps_export.triton`, :mod:`~tbps_export.quickstart`, :mod:`~tbps_export.trt_selfcheck`) speak
Python; the flags live here. PyTorch is imported when a command runs, so ``tbps --help`` stays light.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import click

from tbps_export.calibrate import DEFAULT_FALSE_MATCH_RATE
from tbps_export.quickstart import EXAMPLES, QUICKSTART_ROW
from tbps_export.triton import INSTANCE_KINDS
from tbps_runtime.clikit import (
    TbpsCommand, json_option, output_option, quiet_option, setup_logging, threads_option, user_errors_exit_2,
)
from tbps_runtime.contract import PARITY_ATOL
from tbps_runtime.errors import ConfigError, InputFileNotFoundError
from tbps_runtime.synth import DEFAULT_IDS
from tbps_train.data.readers import DATASETS

logger = logging.getLogger(__name__)


def _profile(allow_max: bool):
    """A click callback parsing ``MIN,OPT,MAX``; with ``allow_max``, MAX may be ``max``
    (the model's max text length), returned as None."""

    def parse(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int, int | None]:
        parts = [p.strip() for p in value.split(",")]
        try:
            if len(parts) != 3:
                raise ValueError
            last = None if allow_max and parts[2] == "max" else int(parts[2])
            return int(parts[0]), int(parts[1]), last
        except ValueError:
            raise click.BadParameter(f"expected MIN,OPT,MAX as integers{' (MAX may be max)' if allow_max else ''}, "
                                     f"not {value!r}") from None

    return parse


def rate_option(default: float | None = DEFAULT_FALSE_MATCH_RATE, help: str = "") -> Callable:
    """``--false-match-rate``, shared by ``tbps calibrate`` and ``tbps export``."""
    return click.option("--false-match-rate", "false_match_rate", type=float, default=default,
                        show_default=default is not None,
                        help="Fraction of non-matching (caption, image) pairs allowed at or above the threshold, "
                             f"in (0, 1).{help}")


# ---- tbps export ---------------------------------------------------------------------------
# short_help= on these commands: one line of `tbps --help` at 80 columns (61 characters).

@click.command(cls=TbpsCommand, short_help="Export a checkpoint to a bundle (ONNX, tokenizer, manifest).")
@click.option("--ckpt", "checkpoint", required=True, type=click.Path(path_type=Path),
              help="Training checkpoint (m.pt) made by tbps train.")
@output_option("Bundle directory to write [default: the checkpoint's name with .bundle].", required=False)
@click.option("--force", is_flag=True, help="Replace an existing bundle at the output path.")
@click.option("--trt", is_flag=True, help="Also build a TensorRT engine per tower (needs TensorRT and a CUDA GPU).")
@click.option("--fp16", is_flag=True, help="Build FP16 TensorRT engines (from a mixed-precision graph).")
@click.option("--trt-batch", callback=_profile(False), default="1,8,32", show_default=True,
              help="TensorRT batch profile MIN,OPT,MAX.")
@click.option("--trt-seq", callback=_profile(True), default="1,32,max", show_default=True,
              help="TensorRT text-length profile MIN,OPT,MAX (max = the model's max text length).")
@click.option("--trt-workspace", "trt_workspace_gib", type=float, default=4.0, show_default=True,
              help="TensorRT builder workspace limit, GiB.")
@click.option("--trt-timing-cache", type=click.Path(path_type=Path), default=None,
              help="TensorRT timing cache file [default: ~/.cache/tbps/tensorrt.timing-cache].")
@click.option("--atol", type=float, default=PARITY_ATOL, show_default=True,
              help="Largest ONNX-vs-PyTorch difference accepted, on unit-norm embeddings.")
@click.option("--explain", is_flag=True,
              help="Also write the attention-emitting graphs *.explain.onnx (for tbps rank --explain).")
@click.option("--int8", is_flag=True,
              help="Also write an onnxruntime int8 bundle beside it (<name>.int8.bundle) for CPUs.")
@click.option("--calibration", type=click.Path(exists=True, path_type=Path), default=None,
              help="With --int8: crops (a folder or list file) to calibrate the image tower's static "
                   "quantization; without it the int8 bundle keeps a float32 image tower.")
@click.option("--calibration-count", type=click.IntRange(1), default=128, show_default=True,
              help="With --int8: how many calibration crops to use (evenly spaced).")
@click.option("--calibrate-dataset", type=click.Choice(DATASETS), default=None,
              help="With --calibrate-root: record the score threshold of tbps rank --min-score auto, measured "
                   "on a split of this dataset (as tbps calibrate does).")
@click.option("--calibrate-root", type=click.Path(path_type=Path), default=None,
              help="With --calibrate-dataset: the dataset's root directory.")
@click.option("--calibrate-split", default=None, help="With --calibrate-dataset: the split the threshold is "
                                                    "measured on (default: val).")
@rate_option(None, f" With --calibrate-dataset (default: {DEFAULT_FALSE_MATCH_RATE}).")
@click.option("--triton", "triton_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write a Triton Inference Server model repository of the towers to this directory "
                   "(as tbps triton does, with its defaults).")
@threads_option("PyTorch and onnxruntime intra-op threads of the export, its checks, --int8 and the score "
                "threshold (default: the cores other processes leave idle).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@quiet_option("Only warnings and errors on stderr.")
@user_errors_exit_2
def export_command(checkpoint: Path, output: str | None, force: bool, trt: bool, fp16: bool,
                   trt_batch: tuple, trt_seq: tuple, trt_workspace_gib: float, trt_timing_cache: Path | None,
                   atol: float, explain: bool, int8: bool, calibration: Path | None, calibration_count: int,
                   calibrate_dataset: str | None, calibrate_root: Path | None, calibrate_split: str | None,
                   false_match_rate: float | None, triton_dir: Path | None, threads: int | None, progress: bool,
                   quiet: bool) -> None:
    """Export a checkpoint to a bundle: ONNX towers checked against PyTorch,
    tokenizer.json, manifest.json, and optionally TensorRT engines, the
    calibrated score threshold and a Triton model repository."""
    from tbps_export.bundle_writer import export_bundle
    from tbps_export.calibrate import check_false_match_rate, read_calibration_split
    from tbps_export.quantize import calibration_paths
    from tbps_export.triton import check_output as check_triton_output
    from tbps_export.triton import write_triton_repository
    from tbps_runtime.threads import choose_threads

    quiet = setup_logging(quiet)
    if (calibrate_dataset is None) != (calibrate_root is None):
        raise ConfigError("--calibrate-dataset and --calibrate-root go together: give both to record the score "
                          "threshold, or neither")
    if calibrate_dataset is None and (calibrate_split, false_match_rate) != (None, None):
        raise ConfigError("--calibrate-split and --false-match-rate apply to the score threshold: add "
                          "--calibrate-dataset and --calibrate-root")
    calibrate_split = calibrate_split or "val"
    false_match_rate = DEFAULT_FALSE_MATCH_RATE if false_match_rate is None else false_match_rate
    if calibrate_dataset is not None:  # a bad rate or dataset is one line before the export, not after it
        check_false_match_rate(false_match_rate)
        read_calibration_split(calibrate_dataset, calibrate_root, calibrate_split)
    # --calibration is read before the export: a bad one is then one line, with no bundle left behind.
    crops = calibration_paths(calibration, calibration_count) if int8 else []
    missing = [p for p in crops if not Path(p).is_file()]
    if missing:
        raise InputFileNotFoundError(f"--calibration: {len(missing)} of {len(crops)} crops not found, "
                                     f"e.g. {missing[0]}")
    if triton_dir is not None:  # a --triton directory that is not ours to write is refused before the export
        check_triton_output(triton_dir, force, output if output is not None else checkpoint.with_suffix(".bundle"))
    threads = choose_threads(threads).threads  # one count for every step, as tbps eval and tbps calibrate
    path = export_bundle(checkpoint, output, force=force, trt=trt, fp16=fp16, progress=progress and not quiet,
                         atol=atol, trt_batch=trt_batch, trt_seq=trt_seq, trt_workspace_gib=trt_workspace_gib,
                         trt_timing_cache=trt_timing_cache, explain=explain, threads=threads)
    click.echo(str(path))
    bundles = [path]
    if int8:
        from tbps_export.quantize import quantize_bundle

        bundles.append(quantize_bundle(path, calibration=crops, force=force, threads=threads))
        click.echo(str(bundles[-1]))
    if calibrate_dataset is not None:
        _calibrate(bundles, calibrate_dataset, calibrate_root, calibrate_split, false_match_rate, threads,
                   progress and not quiet)
    if triton_dir is not None:  # from the float32 bundle, calibrated when asked (tbps.json carries the threshold)
        click.echo(str(write_triton_repository(path, triton_dir, force=force)))


def _calibrate(bundles: list[Path], dataset: str, root: Path, split: str, false_match_rate: float, threads: int,
               progress: bool) -> None:
    """Each new bundle (float32, int8) calibrated with its own towers; the figures logged (stdout keeps
    the bundles' paths only)."""
    from tbps_export.calibrate import calibrate_bundle, describe

    for bundle in bundles:
        record = calibrate_bundle(bundle, dataset, root, split=split, false_match_rate=false_match_rate,
                                  threads=threads, progress=progress)
        logger.info("%s: %s", bundle, "; ".join(describe(record)))


# ---- tbps calibrate ------------------------------------------------------------------------

@click.command(cls=TbpsCommand, short_help="Record the Eq. 14 score above which a hit is trusted.")
@click.option("--bundle", type=click.Path(path_type=Path),
              help="Bundle directory to calibrate; with --gallery, the store's bundle [default: the one it records].")
@click.option("--dataset", type=click.Choice(DATASETS), help="The dataset's format (with --bundle and --root).")
@click.option("--root", type=click.Path(path_type=Path), help="Dataset root directory.")
@click.option("--split", default="val", show_default=True, help="Held-out split to measure on.")
@click.option("--gallery", type=click.Path(path_type=Path),
              help="Calibrate a store (tbps ingest) instead, without labels: on captions of people who are not in "
                   "its footage (--captions, or the bundle's held-out captions), scored against its crops.")
@click.option("--captions", type=click.Path(path_type=Path),
              help="With --gallery: a UTF-8 file of captions of people not in the footage, one per line "
                   "[default: the bundle's held-out captions].")
@rate_option()
@threads_option()
@json_option()
@quiet_option()
@user_errors_exit_2
def calibrate_command(bundle: Path | None, dataset: str | None, root: Path | None, split: str,
                      gallery: Path | None, captions: Path | None, false_match_rate: float,
                      threads: int | None, as_json: bool, quiet: bool) -> None:
    """Record the Eq. 14 score above which a hit is trusted (tbps rank --min-score auto) at a chosen
    false-match rate: in a bundle, measured on a held-out split of a labelled dataset; or, with --gallery,
    in a store, measured on the store's own crops against captions of people who are not there."""
    quiet = setup_logging(quiet or as_json)
    if gallery is not None:
        _calibrate_gallery(gallery, bundle, dataset, root, captions, false_match_rate, threads, as_json)
        return
    from tbps_export.calibrate import calibrate_bundle, describe

    if bundle is None or dataset is None or root is None or captions is not None:
        raise ConfigError("tbps calibrate needs --bundle DIR --dataset NAME --root DIR (a bundle on a labelled "
                          "split), or --gallery STORE [--captions FILE] (a store on its own crops)")
    record = calibrate_bundle(bundle, dataset, root, split=split, false_match_rate=false_match_rate,
                              threads=threads, progress=not quiet)
    click.echo(json.dumps(record) if as_json else "\n".join(describe(record)))


def _calibrate_gallery(gallery: Path, bundle: Path | None, dataset: str | None, root: Path | None,
                       captions: Path | None, false_match_rate: float, threads: int | None, as_json: bool) -> None:
    """tbps calibrate --gallery: the store's threshold, recorded in its meta (torch-free: the runtime's)."""
    from tbps_runtime.search import PersonSearch
    from tbps_runtime.store.calibration import calibrate_gallery
    from tbps_runtime.store.open import open_store

    if dataset is not None or root is not None:
        raise ConfigError("--dataset and --root calibrate a bundle on labelled data; --gallery calibrates a store "
                          "without labels: give one or the other")
    if captions is not None and not captions.is_file():
        raise InputFileNotFoundError(f"--captions: file not found: {captions}")
    with open_store(gallery) as store:
        if bundle is None and not store.bundle:
            raise ConfigError(f"the store {gallery} records no bundle: pass --bundle DIR")
        search = PersonSearch.from_bundle(bundle or store.bundle, threads=threads)
        record = calibrate_gallery(search, store, captions, false_match_rate)
    if as_json:
        click.echo(json.dumps(record.summary()))
        return
    click.echo(f"store threshold {record.value:.6f} (Eq. 14) at false-match rate {record.false_match_rate:g}\n"
               f"measured on {record.captions} captions ({record.captions_from}) x {record.rows} rows of "
               f"{record.rows_at_calibration}; recorded in {gallery}")


# ---- tbps triton ---------------------------------------------------------------------------

@click.command(cls=TbpsCommand, short_help="Write a Triton model repository of a bundle's towers.")
@click.option("--bundle", required=True, type=click.Path(path_type=Path), help="Bundle directory (tbps export).")
@output_option("Triton model repository directory to write.", file_okay=False)
@click.option("--max-batch", "max_batch_size", type=click.IntRange(1), default=32, show_default=True,
              help="max_batch_size of each model (TensorRT models: at most their profile's max batch).")
@click.option("--queue-delay-us", type=click.IntRange(0), default=500, show_default=True,
              help="How long Triton's dynamic batcher waits for more requests, microseconds.")
@click.option("--onnx-device", type=click.Choice(sorted(INSTANCE_KINDS)), default="cpu", show_default=True,
              help="Where Triton runs the ONNX models (TensorRT engines always run on the GPU).")
@click.option("--force", is_flag=True, help="Replace an existing tbps Triton repository at the output path.")
@quiet_option("Warnings only on stderr.")
@user_errors_exit_2
def triton_command(bundle: Path, output: str, max_batch_size: int, queue_delay_us: int, onnx_device: str,
                   force: bool, quiet: bool) -> None:
    """Write a Triton Inference Server model repository of a bundle's towers (ONNX, and its TensorRT
    engines if any): config.pbtxt per model, tbps.json and tokenizer.json for clients."""
    from tbps_export.triton import write_triton_repository

    setup_logging(quiet)
    path = write_triton_repository(bundle, output, max_batch_size=max_batch_size, queue_delay_us=queue_delay_us,
                                   onnx_device=onnx_device, force=force)
    click.echo(str(path))


# ---- tbps quickstart -----------------------------------------------------------------------

@click.command(cls=TbpsCommand, short_help="Train, export and index the demo model on synthetic data.")
@output_option("Where the dataset, checkpoint and results go.", required=False, file_okay=False,
               default="tbps-quickstart", aliases=("--workdir",))
@click.option("--preset", default="demo", show_default=True, type=click.Choice(["tiny", "demo"]))
@click.option("--row", default=QUICKSTART_ROW, show_default=True,
              help="The model: an ablation row (tbps ablate --rows). The default is the row with the best "
                   "validation R@1 on the embedded default (global only, Eq. 9 summed + 1 warm-up epoch); "
                   "`full` is the paper's full model.")
@click.option("--ids", default=DEFAULT_IDS, show_default=True, type=click.IntRange(min=8), help="Synthetic identities.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--examples", default=EXAMPLES, show_default=True, type=click.IntRange(min=1),
              help="Test captions drawn on the results page.")
@threads_option("Training threads (default: the cores other processes leave idle, re-checked as it "
                "trains; pin it for bit-identical reruns).")
@quiet_option()
@user_errors_exit_2
def quickstart_command(output: str, preset: str, row: str, ids: int, seed: int, examples: int,
                       threads: int | None, quiet: bool) -> None:
    """Generate the synthetic dataset, train the demo model (the row validation picks, or --row),
    evaluate it, export it, index the test split and write a results page."""
    from tbps_export.quickstart import run_quickstart
    from tbps_train.text import quiet_transformers

    quiet = setup_logging(quiet)
    quiet_transformers()
    done = run_quickstart(output, preset=preset, row=row, ids=ids, seed=seed, examples=examples,
                          threads=threads, progress=not quiet)
    metrics = done.metrics
    click.echo(f"test: R@1 {metrics['r1']:.2f}  R@5 {metrics['r5']:.2f}  R@10 {metrics['r10']:.2f}  "
               f"mAP {metrics['map']:.2f}  mINP {metrics['minp']:.2f}")
    curves = done.checkpoint.with_suffix(".curves.png")
    curves_note = f"  (training curves: {curves})" if curves.is_file() else ""
    click.echo(f"dataset     {done.data}\ncheckpoint  {done.checkpoint}{curves_note}"
               f"\nmetrics     {done.evaluation}\nbundle      {done.bundle}"
               f"\nthreshold   {_threshold_line(done.threshold)}\ngallery     {done.gallery}"
               "\nresults     " + "\n            ".join(str(p) for p in done.pictures))
    click.echo(f"done in {done.seconds:.0f}s")
    click.echo(f"next: tbps rank --gallery {done.gallery} --query \"a man in a red shirt\" -k 5 --show me.png --explain")


def _threshold_line(record: dict) -> str:
    if not record:
        return "not calibrated (the val split needs 2 identities or more)"
    return (f"{record['value']:.4f} (tbps rank --min-score auto): at most {record['false_match_rate']:.0%} of "
            f"strangers pass it, {record['found_rate']:.0%} of val captions have their person above it")


# ---- tbps trt-selfcheck --------------------------------------------------------------------

@click.command(cls=TbpsCommand, short_help="Check TensorRT engines of a bundle against onnxruntime.")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", "precisions", type=click.Choice(["fp32", "fp16"]), multiple=True,
              help="Engine precision(s) to check [default: both].")
@click.option("--iterations", type=int, default=50, show_default=True, help="Timed runs per engine.")
@json_option("One JSON document on stdout instead of a table.")
@user_errors_exit_2
def selfcheck_command(bundle: Path, precisions: tuple[str, ...], iterations: int, as_json: bool) -> None:
    """Build TensorRT engines from BUNDLE's ONNX towers, compare them with onnxruntime, and time them.

    Exit status 0 when every engine is within tolerance, 1 when one is not, 2 when TensorRT or a GPU
    is missing or the bundle is bad.
    """
    from tbps_export.trt_selfcheck import selfcheck, table

    setup_logging(quiet=as_json)
    records = selfcheck(bundle, precisions or ("fp32", "fp16"), iterations=iterations)
    click.echo(json.dumps(records, indent=2) if as_json else table(records))
    raise SystemExit(0 if all(r["ok"] for r in records) else 1)
