"""``tbps-quickstart``: the whole toolkit on the embedded default (the synthetic dataset).

Each step reuses what an earlier run finished: the dataset is generated once,
training resumes from its checkpoint, and a finished run is not retrained.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click

from tbps_runtime.cli_support import setup_logging, user_errors_exit_2
from tbps_train.data.synth import DEFAULT_IDS

logger = logging.getLogger(__name__)


@click.command()
@click.option("--workdir", default="tbps-quickstart", show_default=True, type=click.Path(file_okay=False),
              help="Where the dataset, checkpoint and results go.")
@click.option("--preset", default="demo", show_default=True, type=click.Choice(["tiny", "demo"]))
@click.option("--ids", default=DEFAULT_IDS, show_default=True, type=click.IntRange(min=8), help="Synthetic identities.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--quiet", is_flag=True)
@user_errors_exit_2
def quickstart_command(workdir: str, preset: str, ids: int, seed: int, quiet: bool) -> None:
    """Generate the synthetic dataset, train the demo model and evaluate it."""
    from tbps_train.cli import _quiet_libraries
    from tbps_train.config import apply_overrides, load_preset
    from tbps_train.data.synth import generate
    from tbps_train.train import train

    setup_logging(quiet)
    _quiet_libraries()
    work = Path(workdir)
    data, checkpoint = work / "data", work / "m.pt"
    started = time.perf_counter()
    if (data / "reid_raw.json").is_file():
        logger.info("[1/3] dataset: reusing %s", data)
    else:
        logger.info("[1/3] dataset: generating %d synthetic identities in %s", ids, data)
        generate(data, ids=ids, seed=seed, progress=not quiet)
    logger.info("[2/3] training the %s preset -> %s", preset, checkpoint)
    config = apply_overrides(load_preset(preset), "train", seed=seed)
    train(config, "cuhk-pedes", data, checkpoint, resume=checkpoint.exists(), progress=not quiet)
    logger.info("[3/3] evaluating on the test split")
    metrics = _evaluate(checkpoint, data)
    (work / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    click.echo(f"test: R@1 {metrics['r1']:.2f}  R@5 {metrics['r5']:.2f}  R@10 {metrics['r10']:.2f}  "
               f"mAP {metrics['map']:.2f}  mINP {metrics['minp']:.2f}")
    click.echo(f"dataset     {data}\ncheckpoint  {checkpoint}\nmetrics     {work / 'eval.json'}")
    click.echo(f"done in {time.perf_counter() - started:.0f}s")


def _evaluate(checkpoint: Path, data: Path) -> dict[str, float]:
    from tbps_runtime.tokenizer import load_tokenizer
    from tbps_train.checkpoint import load_checkpoint, model_from_checkpoint
    from tbps_train.data.readers import read_split
    from tbps_train.evaluate import evaluate

    payload = load_checkpoint(checkpoint)
    model, config = model_from_checkpoint(payload)
    tokenizer = load_tokenizer(payload["tokenizer_json"], config.model.max_text_length)
    return evaluate(model, tokenizer, read_split("cuhk-pedes", data, "test"))
