"""The twin query split: read from twins.json (untrusted), scored on its own by the evaluator."""

import json

import numpy as np
import pytest

from tbps_runtime.errors import DataError, UnsafePathError
from tbps_train.data.pipeline import CaptionTable
from tbps_train.data.readers import read_split
from tbps_train.data.twins import read_twin_queries


@pytest.fixture(scope="module")
def parts_root(tmp_path_factory):
    from tbps_runtime.synth.parts import generate_parts

    return generate_parts(tmp_path_factory.mktemp("parts") / "data", ids=40, images_per_id=2, seed=0,
                          progress=False)


def test_twin_rows_are_the_captions_twins_json_names(parts_root):
    records = read_split("cuhk-pedes", parts_root, "test")
    rows = read_twin_queries(parts_root, "test", records)
    captions = CaptionTable.from_records(records)
    document = json.loads((parts_root / "twins.json").read_text())
    expected = {(q["file_path"], q["caption_index"]) for q in document["queries"] if q["split"] == "test"}
    assert len(rows) == len(expected) > 0
    entries = {e["file_path"]: e for e in json.loads((parts_root / "reid_raw.json").read_text())}
    by_path = {str(r.image_path.resolve()): r for r in records}
    for file_path, index in expected:
        record = by_path[str((parts_root / "imgs" / file_path).resolve())]
        row = captions.texts.index(record.captions[index])
        assert row in rows
        assert entries[file_path]["twin_id"] is not None
    assert read_twin_queries(parts_root, "train", read_split("cuhk-pedes", parts_root, "train")).size == 0


def test_a_dataset_without_twins_has_no_twin_split(synth_root):
    assert read_twin_queries(synth_root, "test", read_split("cuhk-pedes", synth_root, "test")) is None


def _copy_with_twins(parts_root, tmp_path, queries):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(parts_root, root)
    (root / "twins.json").write_text(json.dumps({"format": "tbps-twins", "version": 1, "queries": queries}))
    return root


def test_twins_json_is_untrusted(parts_root, tmp_path):
    records = read_split("cuhk-pedes", parts_root, "test")
    outside = _copy_with_twins(parts_root, tmp_path, [{"split": "test", "file_path": "../reid_raw.json",
                                                       "caption_index": 0}])
    with pytest.raises(UnsafePathError, match="outside"):
        read_twin_queries(outside, "test", read_split("cuhk-pedes", outside, "test"))
    (outside / "twins.json").write_text(json.dumps({"format": "tbps-twins", "version": 1, "queries": [
        {"split": "test", "file_path": records[0].image_path.name, "caption_index": 7}]}))
    with pytest.raises(DataError, match="does not hold"):
        read_twin_queries(outside, "test", read_split("cuhk-pedes", outside, "test"))
    (outside / "twins.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="not a twin split"):
        read_twin_queries(outside, "test", read_split("cuhk-pedes", outside, "test"))


def test_evaluate_scores_the_twin_split_against_the_whole_gallery(tiny_checkpoint, parts_root):
    from tbps_runtime.metrics import retrieval_metrics
    from tbps_runtime.model.tokenizer import load_tokenizer
    from tbps_train.checkpoint import load_checkpoint, model_from_checkpoint
    from tbps_train.evaluate import embed_images, embed_texts, evaluate
    from tbps_train.data.pipeline import ImageStore
    from tbps_train.train import twin_subsets

    payload = load_checkpoint(tiny_checkpoint)
    model, config = model_from_checkpoint(payload)
    tokenizer = load_tokenizer(payload["tokenizer_json"], config.model.max_text_length)
    records = read_split("cuhk-pedes", parts_root, "test")
    subsets = twin_subsets("cuhk-pedes", parts_root, "test", records)
    metrics = evaluate(model, tokenizer, records, per_slot=True, query_subsets=subsets)
    rows = subsets["twins"]
    gallery = embed_images(model, ImageStore(records, config.model.image_size, progress=False))
    captions = CaptionTable.from_records(records)
    queries = embed_texts(model, tokenizer, [captions.texts[i] for i in rows])
    scores = (queries.flatten(1) @ gallery.flatten(1).T).numpy()
    expected = retrieval_metrics(scores, captions.person_ids[rows], np.array([r.person_id for r in records]))
    twins = metrics["subsets"]["twins"]
    assert twins["queries"] == len(rows)
    assert twins["r1"] == pytest.approx(expected["r1"], abs=1e-6)
    assert twins["per_slot"]["all"] == pytest.approx(expected["r1"], abs=0.01)
