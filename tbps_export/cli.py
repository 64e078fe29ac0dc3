"""``tbps-export``: the command line of :func:`tbps_export.export_bundle`."""

from __future__ import annotations

from pathlib import Path

import click

from tbps_runtime.cli.support import TbpsCommand, setup_logging, user_errors_exit_2
from tbps_runtime.contract import PARITY_ATOL
from tbps_runtime.errors import InputFileNotFoundError


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
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@user_errors_exit_2
def export_command(checkpoint: Path, output: Path | None, force: bool, trt: bool, fp16: bool,
                   trt_batch: tuple, trt_seq: tuple, trt_workspace_gib: float, trt_timing_cache: Path | None,
                   atol: float, explain: bool, int8: bool, calibration: Path | None, calibration_count: int,
                   progress: bool, quiet: bool) -> None:
    """Export a checkpoint to a bundle: ONNX towers checked against PyTorch,
    tokenizer.json, manifest.json, and optionally TensorRT engines."""
    from tbps_export.bundle_writer import export_bundle
    from tbps_export.quantize import calibration_paths

    quiet = setup_logging(quiet)
    # --calibration is read before the export: a bad one is then one line, with no bundle left behind.
    crops = calibration_paths(calibration, calibration_count) if int8 else []
    missing = [p for p in crops if not Path(p).is_file()]
    if missing:
        raise InputFileNotFoundError(f"--calibration: {len(missing)} of {len(crops)} crops not found, "
                                     f"e.g. {missing[0]}")
    path = export_bundle(checkpoint, output, force=force, trt=trt, fp16=fp16, progress=progress and not quiet,
                         atol=atol, trt_batch=trt_batch, trt_seq=trt_seq, trt_workspace_gib=trt_workspace_gib,
                         trt_timing_cache=trt_timing_cache, explain=explain)
    click.echo(str(path))
    if int8:
        from tbps_export.quantize import quantize_bundle

        click.echo(str(quantize_bundle(path, calibration=crops, force=force)))
