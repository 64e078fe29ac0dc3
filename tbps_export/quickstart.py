"""The whole toolkit on the embedded default (the synthetic dataset): :func:`run_quickstart`, which
``tbps quickstart`` runs.

Steps: synthetic dataset -> train the demo model -> evaluate -> export the
bundle (with the explain graphs) and calibrate its score threshold on the val
split -> index the test split with the runtime -> rank a few test captions and
write ``results.png`` and ``results.html``.

Each step reuses what an earlier run finished: the dataset is generated once,
training resumes from its checkpoint, a finished run is not retrained, and the
evaluation, bundle, gallery and results are redone only when older than what
they were made from.

When it trains, the first training steps are timed and the time the rest will
take on this machine is estimated from them (:class:`Eta`); every later step
says how long is left.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from tbps_runtime.atomic import read_json, write_json_atomic
from tbps_runtime.errors import ConfigError
from tbps_runtime.synth import DEFAULT_IDS

logger = logging.getLogger(__name__)

EXAMPLES = 4  # test captions on the results page
# The model the quickstart trains: the ablation row with the best mean validation R@1 on the embedded default
# (docs/results.md, 3 seeds each: global only, Eq. 9 summed + 1 warm-up epoch, 69.65 +- 1.20; the paper's full
# model, 52.53 +- 1.32). ``row="full"`` trains the paper's full model.
QUICKSTART_ROW = "baseline-sum-warmup"
RESULTS_K = 5  # crops per caption
_METRICS = ("r1", "r5", "r10", "map", "minp")  # what eval.json must hold to be reused

# The time estimate prices every step in training samples (one caption-image pair's share of a training
# step: forward, backward, Adam), so the measured step time prices them all. Ratios from the reference
# run (runs/qs.log, demo preset, 2-core CPU): PyTorch embeds an image or a caption in about half a sample's
# time, onnxruntime an image in a quarter and a caption in 0.6; the export (trace, fuse, parity, explain
# graphs) took about 100 training steps, but never less than about 45 s (its fixed cost: the tiny preset's
# takes as long), ranking and drawing the results about 100 samples.
EVAL_ITEM_SAMPLES = 0.5
ONNX_IMAGE_SAMPLES, ONNX_CAPTION_SAMPLES = 0.25, 0.6
EXPORT_STEPS, EXPORT_MIN_SECONDS = 100, 45.0
RESULTS_SAMPLES = 100
CALIBRATION_STEPS = 5  # steps timed after the first (which warms up) before the estimate is given
STEP_NAMES = {"training": "training", "evaluation": "evaluation", "export": "export and calibration",
              "index": "indexing", "results": "results"}


@dataclass(frozen=True)
class Quickstart:
    """What :func:`run_quickstart` made, each step's output (made now or reused)."""

    data: Path  # the synthetic dataset (CUHK-PEDES layout)
    checkpoint: Path
    evaluation: Path  # eval.json: the test split's metrics
    metrics: dict[str, float]
    bundle: Path
    threshold: dict  # the bundle's score threshold record; empty when the val split could not calibrate one
    gallery: Path  # the test split indexed by the runtime
    pictures: tuple[Path, ...]  # results.png, results.html, explain.png
    seconds: float


def run_quickstart(work: str | Path, *, preset: str = "demo", row: str = QUICKSTART_ROW, ids: int = DEFAULT_IDS,
                   seed: int = 0, examples: int = EXAMPLES, threads: int | None = None,
                   progress: bool = True) -> Quickstart:
    """Generate the synthetic dataset in ``work``, train ``preset`` as the ablation row ``row`` on it
    (``tbps_train.ablate.ROWS``; ``"full"``: the paper's full model), evaluate, export, calibrate, index the
    test split and draw ``examples`` test captions' results; each step reuses what an earlier run finished.
    ``threads``: training and calibration threads (default: the policy's).

    Raises:
        ConfigError: an unknown row, or a finished ``m.pt`` in ``work`` trained as another model.
    """
    from tbps_train.checkpoint import check_checkpoint_output

    quiet = not progress
    work = Path(work)
    data, checkpoint = work / "data", work / "m.pt"
    check_checkpoint_output(checkpoint)  # before the dataset: a foreign m.pt there is never trained over
    started = time.perf_counter()
    config = _row_config(preset, row, seed)  # an unknown row fails before any work
    _dataset(data, ids, seed, quiet)
    eta = Eta(Workload.of(config, data, examples))
    _train(checkpoint, data, config, f"{preset} preset as the {row} row", quiet, threads, eta.on_step)
    evaluation = work / "eval.json"
    eta.announce("evaluation")
    metrics = _evaluation(checkpoint, data, evaluation, quiet)
    eta.announce("export")
    bundle = _export(checkpoint, work / "m.bundle", quiet)
    threshold = _calibrate(bundle, data, quiet, threads)
    eta.announce("index")
    gallery, records = _index(bundle, data, work / "g.npy", quiet)
    eta.announce("results")
    pictures = _results(bundle, gallery, records, work, examples)
    return Quickstart(data, checkpoint, evaluation, metrics, bundle, threshold, gallery, pictures,
                      time.perf_counter() - started)


def _dataset(data: Path, ids: int, seed: int, quiet: bool) -> None:
    from tbps_runtime.synth.dataset import generate

    if (data / "reid_raw.json").is_file():
        logger.info("[1/6] dataset: reusing %s", data)
        return
    logger.info("[1/6] dataset: generating %d synthetic identities in %s", ids, data)
    generate(data, ids=ids, seed=seed, progress=not quiet)


def _row_config(preset: str, row: str, seed: int):
    """The run config of ``preset`` trained as the ablation row ``row`` with ``seed``."""
    from tbps_train.ablate import ROWS, row_config
    from tbps_train.config import load_preset

    chosen = next((r for r in ROWS if r.slug == row), None)
    if chosen is None:
        raise ConfigError(f"unknown row {row!r}; choose one of {', '.join(r.slug for r in ROWS)}")
    return row_config(load_preset(preset), chosen, seed)


def _train(checkpoint: Path, data: Path, config, what: str, quiet: bool, threads: int | None,
           on_step: Callable[[int, int], None] | None = None) -> None:
    from tbps_train.train import train

    if _trained(checkpoint, config):
        logger.info("[2/6] training: reusing the finished run %s", checkpoint)
        return
    logger.info("[2/6] training the %s -> %s", what, checkpoint)
    train(config, "cuhk-pedes", data, checkpoint, resume=checkpoint.exists(), progress=not quiet, threads=threads,
          on_step=on_step)


@dataclass(frozen=True)
class Workload:
    """What the steps after the dataset process: the counts the time estimate prices."""

    batch_size: int
    steps_per_epoch: int
    epochs: int
    eval_every: int
    val_images: int
    val_captions: int
    test_images: int
    test_captions: int
    examples: int

    @classmethod
    def of(cls, config, data: Path, examples: int) -> "Workload":
        """The counts of ``config``'s run on the dataset at ``data`` (annotations only: no image is read)."""
        from tbps_train.data.readers import has_split, read_split
        from tbps_train.train import steps_per_epoch

        def split(name: str) -> tuple[int, int]:  # (images, captions); an unreadable split prices nothing
            try:
                records = read_split("cuhk-pedes", data, name, check_images=False) if has_split(
                    "cuhk-pedes", data, name) else []
            except (OSError, ValueError):  # the steps that read it will say why
                records = []
            return len(records), sum(len(r.captions) for r in records)

        (_, train_captions), val, test = split("train"), split("val"), split("test")
        train = config.train
        return cls(train.batch_size, steps_per_epoch(train_captions, train.batch_size), train.epochs,
                   train.eval_every, *val, *test, min(examples, test[0]))

    def samples(self, steps_left: int) -> dict[str, float]:
        """Each step's work in training samples, with ``steps_left`` training steps to run."""
        epochs_left = math.ceil(steps_left / max(self.steps_per_epoch, 1))
        validations = sum(1 for epoch in range(self.epochs - epochs_left + 1, self.epochs + 1)
                          if self.eval_every and (epoch % self.eval_every == 0 or epoch == self.epochs))
        val_eval = (self.val_images + self.val_captions) * EVAL_ITEM_SAMPLES
        return {
            "training": steps_left * self.batch_size + validations * val_eval,
            "evaluation": (self.test_images + self.test_captions) * EVAL_ITEM_SAMPLES,
            "export": self.val_images * ONNX_IMAGE_SAMPLES + self.val_captions * ONNX_CAPTION_SAMPLES,  # + export
            "index": self.test_images * ONNX_IMAGE_SAMPLES,
            "results": RESULTS_SAMPLES + self.examples * ONNX_CAPTION_SAMPLES,
        }


@dataclass
class Eta:
    """How long the quickstart has left, from the measured time of its first training steps.

    Pass :meth:`on_step` to training: after the first step (a warm-up) and
    :data:`CALIBRATION_STEPS` more it logs the estimate of every step still
    to run; :meth:`announce` logs, as each later step starts, how long is
    left in all. Without training (a finished run reused) nothing is measured
    and nothing is estimated. ``clock``: seconds (injected by tests).
    """

    work: Workload
    clock: Callable[[], float] = time.perf_counter
    stamps: list[float] = field(default_factory=list)  # clock after each timed step
    step_seconds: float | None = None  # one training step on this machine, measured
    plan: dict[str, float] = field(default_factory=dict)  # estimated seconds of each step still to run

    def on_step(self, done: int, total: int) -> None:
        """Training's hook (after each optimiser step): time the first steps, then estimate once."""
        if self.step_seconds is not None:
            return
        self.stamps.append(self.clock())
        if done < min(total, CALIBRATION_STEPS + 1) or len(self.stamps) < 2:
            return
        self.step_seconds = (self.stamps[-1] - self.stamps[0]) / (len(self.stamps) - 1)
        unit = self.step_seconds / self.work.batch_size  # seconds per training sample
        self.plan = {name: unit * samples for name, samples in self.work.samples(total - done).items()}
        self.plan["export"] += max(EXPORT_STEPS * self.step_seconds, EXPORT_MIN_SECONDS)
        parts = ", ".join(f"{STEP_NAMES[name]} {_duration(seconds)}" for name, seconds in self.plan.items())
        with tqdm.external_write_mode(file=sys.stderr):  # a line of its own, not inside the epoch's bar
            logger.info("      estimate on this machine: about %s to go (%s), from %.2f s per training step",
                        _duration(sum(self.plan.values())), parts, self.step_seconds)

    def left(self, step: str) -> float | None:
        """Estimated seconds from the start of ``step`` to the end; None when nothing was measured."""
        if not self.plan:
            return None
        names = list(self.plan)
        return sum(self.plan[name] for name in names[names.index(step):])

    def announce(self, step: str) -> None:
        left = self.left(step)
        if left is not None:
            logger.info("      ETA: about %s left in all", _duration(left))


def _duration(seconds: float) -> str:
    """Rounded as an estimate deserves: "40 s", "3 min", "1 h 10 min"."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def _evaluation(checkpoint: Path, data: Path, evaluation: Path, quiet: bool = True) -> dict[str, float]:
    if _fresh(evaluation, checkpoint):
        try:
            metrics = read_json(evaluation)
            if isinstance(metrics, dict) and all(isinstance(metrics.get(k), (int, float)) for k in _METRICS):
                logger.info("[3/6] evaluation: reusing %s", evaluation)
                return metrics
        except ValueError:  # not JSON (edited, truncated): evaluate again
            pass
    logger.info("[3/6] evaluating on the test split")
    started = time.perf_counter()
    metrics = _evaluate(checkpoint, data, progress=not quiet)
    write_json_atomic(evaluation, metrics)  # an interrupted write never leaves a truncated eval.json
    logger.info("      evaluation took %.1f s", time.perf_counter() - started)
    return metrics


def _trained(checkpoint: Path, config) -> bool:
    """``checkpoint`` holds a run of ``config``'s model and losses that finished all its epochs.

    Raises:
        ConfigError: it finished as another model (another row or preset): never reused, never trained over.
    """
    import dataclasses

    import torch

    from tbps_train.config import RunConfig

    if not checkpoint.is_file():
        return False
    try:
        payload = torch.load(checkpoint, weights_only=True, mmap=True)  # mmap: no weights are read
        finished = payload["train_state"]["epoch"] >= payload["config"]["train"]["epochs"]
        recorded = RunConfig.from_dict(payload["config"])  # fields it predates take their defaults
    except Exception:  # not readable as a finished run: let training decide (and explain)
        return False
    changed = sorted(f"{part}.{key}" for part in ("model", "loss")
                     for key, value in dataclasses.asdict(getattr(config, part)).items()
                     if getattr(getattr(recorded, part), key) != value)
    if finished and changed:
        raise ConfigError(f"{checkpoint} is a finished run of another model ({', '.join(changed[:4])} differ): "
                          "pick another work directory, or the row it was trained as")
    return finished


def _fresh(path: Path, *sources: Path) -> bool:
    """``path`` exists and is newer than every source (so it was made from them)."""
    return path.exists() and all(path.stat().st_mtime >= s.stat().st_mtime for s in sources)


def _export(checkpoint: Path, bundle: Path, quiet: bool) -> Path:
    from tbps_runtime.contract import EXPLAIN_TOWERS, MANIFEST_FILE
    from tbps_runtime.model.bundle import load_manifest

    manifest = bundle / MANIFEST_FILE
    if _fresh(manifest, checkpoint) and all(t.name in load_manifest(bundle).towers for t in EXPLAIN_TOWERS):
        logger.info("[4/6] bundle: reusing %s", bundle)
        return bundle
    logger.info("[4/6] exporting the ONNX bundle (with the explain graphs) -> %s", bundle)
    from tbps_export.bundle_writer import export_bundle

    started = time.perf_counter()
    export_bundle(checkpoint, bundle, force=bundle.exists(), progress=not quiet, explain=True)
    logger.info("      export took %.1f s", time.perf_counter() - started)
    return bundle


def _calibrate(bundle: Path, data: Path, quiet: bool, threads: int | None) -> dict:
    """The bundle's score threshold on the val split at the default false-match rate (kept when recorded)."""
    from tbps_export.calibrate import DEFAULT_FALSE_MATCH_RATE, calibrate_bundle
    from tbps_runtime.model.bundle import load_manifest

    record = load_manifest(bundle).score_threshold
    if (record.get("dataset"), record.get("split"), record.get("false_match_rate")) == \
            ("cuhk-pedes", "val", DEFAULT_FALSE_MATCH_RATE):
        logger.info("      score threshold: reusing %.4f", record["value"])
        return record
    logger.info("      calibrating the score threshold on the val split")
    try:
        return calibrate_bundle(bundle, "cuhk-pedes", data, split="val", threads=threads, progress=not quiet)
    except ConfigError as e:  # a val split of one identity (--ids 8 or 9): the rest of the chain still runs
        logger.warning("      no score threshold: %s", e)
        return {}


def _index(bundle: Path, data: Path, gallery: Path, quiet: bool) -> tuple[Path, list]:
    from tbps_runtime.contract import MANIFEST_FILE
    from tbps_runtime.gallery.npy import sidecar_path
    from tbps_runtime.search import PersonSearch
    from tbps_train.data.readers import read_split

    records = read_split("cuhk-pedes", data, "test")
    if _fresh(gallery, bundle / MANIFEST_FILE) and _fresh(sidecar_path(gallery), bundle / MANIFEST_FILE):
        logger.info("[5/6] gallery: reusing %s", gallery)
        return gallery, records
    logger.info("[5/6] indexing the %d test images with the runtime -> %s", len(records), gallery)
    started = time.perf_counter()
    search = PersonSearch.from_bundle(bundle)
    search.index([r.image_path for r in records], gallery, identities=[r.person_id for r in records],
                 progress=not quiet)
    logger.info("      indexing took %.1f s", time.perf_counter() - started)
    return gallery, records


def _results(bundle: Path, gallery: Path, records: list, work: Path, examples: int) -> tuple[Path, ...]:
    """Rank ``examples`` test captions (spread over the split) and draw results.png / results.html
    (and explain.png: the same with the attention maps)."""
    from tbps_runtime.report import draw
    from tbps_runtime.search import PersonSearch

    png, page, explained = work / "results.png", work / "results.html", work / "explain.png"
    if all(_fresh(path, gallery) for path in (png, page, explained)):
        logger.info("[6/6] results: reusing %s", page)
        return png, page, explained
    examples = min(examples, len(records))  # more than the split holds: each test image once
    logger.info("[6/6] ranking %d test captions -> %s, %s", examples, png, page)
    started = time.perf_counter()
    picks = [records[i * len(records) // examples] for i in range(examples)]
    queries, identities = [r.captions[0] for r in picks], [r.person_id for r in picks]
    search = PersonSearch.from_bundle(bundle)
    results = search.rank(queries, gallery, k=RESULTS_K)
    explanations = [search.explain(q, [m.path for m in matches]) for q, matches in zip(queries, results)]
    draw.draw_results(queries, results, png, query_identities=identities)
    draw.write_html(queries, results, page, query_identities=identities, explanations=explanations,
                    title=f"tbps quickstart: test captions, top {RESULTS_K}")
    draw.draw_results(queries, results, explained, query_identities=identities, explanations=explanations)
    logger.info("      ranking and drawing took %.1f s", time.perf_counter() - started)
    return png, page, explained


def _evaluate(checkpoint: Path, data: Path, progress: bool = False) -> dict[str, float]:
    from tbps_runtime.model.tokenizer import load_tokenizer
    from tbps_train.checkpoint import load_checkpoint, model_from_checkpoint
    from tbps_train.data.readers import read_split
    from tbps_train.evaluate import evaluate

    payload = load_checkpoint(checkpoint)
    model, config = model_from_checkpoint(payload)
    tokenizer = load_tokenizer(payload["tokenizer_json"], config.model.max_text_length)
    return evaluate(model, tokenizer, read_split("cuhk-pedes", data, "test"), progress=progress)
