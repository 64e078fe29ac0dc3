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
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tbps_runtime.atomic import read_json
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
    _train(checkpoint, data, config, f"{preset} preset as the {row} row", quiet, threads)
    evaluation = work / "eval.json"
    metrics = _evaluation(checkpoint, data, evaluation)
    bundle = _export(checkpoint, work / "m.bundle", quiet)
    threshold = _calibrate(bundle, data, quiet, threads)
    gallery, records = _index(bundle, data, work / "g.npy", quiet)
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


def _train(checkpoint: Path, data: Path, config, what: str, quiet: bool, threads: int | None) -> None:
    from tbps_train.train import train

    if _trained(checkpoint, config):
        logger.info("[2/6] training: reusing the finished run %s", checkpoint)
        return
    logger.info("[2/6] training the %s -> %s", what, checkpoint)
    train(config, "cuhk-pedes", data, checkpoint, resume=checkpoint.exists(), progress=not quiet, threads=threads)


def _evaluation(checkpoint: Path, data: Path, evaluation: Path) -> dict[str, float]:
    if _fresh(evaluation, checkpoint):
        try:
            metrics = read_json(evaluation)
            if isinstance(metrics, dict) and all(isinstance(metrics.get(k), (int, float)) for k in _METRICS):
                logger.info("[3/6] evaluation: reusing %s", evaluation)
                return metrics
        except ValueError:  # not JSON (edited, truncated): evaluate again
            pass
    logger.info("[3/6] evaluating on the test split")
    metrics = _evaluate(checkpoint, data)
    evaluation.write_text(json.dumps(metrics, indent=2) + "\n")
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


def _evaluate(checkpoint: Path, data: Path) -> dict[str, float]:
    from tbps_runtime.model.tokenizer import load_tokenizer
    from tbps_train.checkpoint import load_checkpoint, model_from_checkpoint
    from tbps_train.data.readers import read_split
    from tbps_train.evaluate import evaluate

    payload = load_checkpoint(checkpoint)
    model, config = model_from_checkpoint(payload)
    tokenizer = load_tokenizer(payload["tokenizer_json"], config.model.max_text_length)
    return evaluate(model, tokenizer, read_split("cuhk-pedes", data, "test"))
