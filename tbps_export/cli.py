"""``tbps-export``: the command line of :func:`tbps_export.export_bundle`."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from tbps_export.calibrate import DEFAULT_FALSE_MATCH_RATE, rate_option
from tbps_runtime.cli.support import TbpsCommand, setup_logging, user_errors_exit_2
from tbps_runtime.contract import PARITY_ATOL
from tbps_runtime.errors import ConfigError, InputFileNotFoundError
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


@click.command(cls=TbpsCommand)
@click.option("--ckpt", "checkpoint", required=True, type=click.Path(path_type=Path),
              help="Training checkpoint (m.pt) made by tbps-train.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Bundle directory to write [default: the checkpoint's name with .bundle].")
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
              help="Also write the attention-emitting graphs *.explain.onnx (for tbps-rank --explain).")
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
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@user_errors_exit_2
def export_command(checkpoint: Path, output: Path | None, force: bool, trt: bool, fp16: bool,
                   trt_batch: tuple, trt_seq: tuple, trt_workspace_gib: float, trt_timing_cache: Path | None,
                   atol: float, explain: bool, int8: bool, calibration: Path | None, calibration_count: int,
                   calibrate_dataset: str | None, calibrate_root: Path | None, calibrate_split: str | None,
                   false_match_rate: float | None, triton_dir: Path | None, progress: bool, quiet: bool) -> None:
    """Export a checkpoint to a bundle: ONNX towers checked against PyTorch,
    tokenizer.json, manifest.json, and optionally TensorRT engines, the
    calibrated score threshold and a Triton model repository."""
    from tbps_export.bundle_writer import export_bundle
    from tbps_export.calibrate import check_false_match_rate, read_calibration_split
    from tbps_export.quantize import calibration_paths
    from tbps_export.triton import check_output as check_triton_output
    from tbps_export.triton import write_triton_repository

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
    path = export_bundle(checkpoint, output, force=force, trt=trt, fp16=fp16, progress=progress and not quiet,
                         atol=atol, trt_batch=trt_batch, trt_seq=trt_seq, trt_workspace_gib=trt_workspace_gib,
                         trt_timing_cache=trt_timing_cache, explain=explain)
    click.echo(str(path))
    bundles = [path]
    if int8:
        from tbps_export.quantize import quantize_bundle

        bundles.append(quantize_bundle(path, calibration=crops, force=force))
        click.echo(str(bundles[-1]))
    if calibrate_dataset is not None:
        _calibrate(bundles, calibrate_dataset, calibrate_root, calibrate_split, false_match_rate,
                   progress and not quiet)
    if triton_dir is not None:  # from the float32 bundle, calibrated when asked (tbps.json carries the threshold)
        click.echo(str(write_triton_repository(path, triton_dir, force=force)))


def _calibrate(bundles: list[Path], dataset: str, root: Path, split: str, false_match_rate: float,
               progress: bool) -> None:
    """Each new bundle (float32, int8) calibrated with its own towers; the figures logged (stdout keeps
    the bundles' paths only)."""
    from tbps_export.calibrate import calibrate_bundle, describe

    for bundle in bundles:
        record = calibrate_bundle(bundle, dataset, root, split=split, false_match_rate=false_match_rate,
                                  progress=progress)
        logger.info("%s: %s", bundle, "; ".join(describe(record)))
