"""End to end on a real exported bundle: the tiny trained model, its synthetic test split.

checkpoint -> tbps_export.export_bundle (the session's ``exported_bundle``) -> tbps-index -> tbps-rank,
and the runtime against PyTorch on the same images and captions.
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tbps_runtime.cli.search import index_command, rank_command
from tbps_runtime.gallery.open import load_gallery
from tbps_runtime.metrics import retrieval_metrics
from tbps_runtime.ranking import similarity
from tbps_runtime.search import PersonSearch
from retrieval_chance import chance_average_precision

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def records(synth_root):
    from tbps_train.data.readers import read_split

    return read_split("cuhk-pedes", synth_root, "test")


@pytest.fixture(scope="module")
def gallery_path(exported_bundle, records, tmp_path_factory):
    folder = tmp_path_factory.mktemp("index")
    listing = folder / "test.txt"
    listing.write_text("".join(f"{r.image_path}\t{r.person_id}\n" for r in records))
    output = folder / "g.npy"
    result = CliRunner().invoke(index_command, ["--bundle", str(exported_bundle), "--images", str(listing),
                                                "-o", str(output), "--batch-size", "7", "--quiet"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return output


@pytest.fixture(scope="module")
def search(exported_bundle):
    return PersonSearch.from_bundle(exported_bundle, threads=2)


def captions_of(records):
    pairs = [(caption, r.person_id) for r in records for caption in r.captions]
    return [c for c, _ in pairs], np.array([i for _, i in pairs])


def test_index_records_every_image_with_its_identity(gallery_path, records, exported_bundle):
    gallery = load_gallery(gallery_path)
    assert [e.path for e in gallery.entries] == [str(r.image_path) for r in records]
    assert [e.identity for e in gallery.entries] == [r.person_id for r in records]
    assert gallery.unreadable == [] and gallery.bundle == str(exported_bundle.resolve())


def runtime_recall(results, query_ids, k):
    """R@k (x100) from the runtime's own top-k: a hit is any of the k best with the caption's identity."""
    return 100 * np.mean([any(m.identity == q for m in matches[:k]) for matches, q in zip(results, query_ids)])


def test_runtime_ranks_the_test_split_exactly_as_pytorch_evaluates_it(search, gallery_path, records,
                                                                      tiny_checkpoint):
    from tbps_runtime.model.tokenizer import load_tokenizer
    from tbps_train.checkpoint import load_checkpoint, model_from_checkpoint
    from tbps_train.evaluate import evaluate

    payload = load_checkpoint(tiny_checkpoint)
    model, config = model_from_checkpoint(payload)
    expected = evaluate(model, load_tokenizer(payload["tokenizer_json"], config.model.max_text_length), records)
    gallery = load_gallery(gallery_path)
    captions, query_ids = captions_of(records)
    results = search.rank(captions, gallery, k=10)
    gallery_ids = np.array([e.identity for e in gallery.entries])
    metrics = retrieval_metrics(similarity(search.embed_texts(captions), gallery.embeddings), query_ids, gallery_ids)
    for k in (1, 5, 10):
        assert runtime_recall(results, query_ids, k) == pytest.approx(metrics[f"r{k}"])  # top-k = shared metrics
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-6), (metrics, expected)  # = the PyTorch model


def test_index_then_rank_puts_the_right_identities_on_top(learned_checkpoint, easy_root, tmp_path):
    """A trained model's bundle, its unseen test split: index -> rank finds the captions' people."""
    from tbps_export import export_bundle
    from tbps_train.data.readers import read_split

    learned = PersonSearch.from_bundle(export_bundle(learned_checkpoint, tmp_path / "learned.bundle"))
    test = read_split("cuhk-pedes", easy_root, "test")
    gallery = learned.index([r.image_path for r in test], tmp_path / "g.npy",
                            identities=[r.person_id for r in test], batch_size=16)
    captions, query_ids = captions_of(test)
    results = learned.rank(captions, gallery, k=10)
    gallery_ids = np.array([e.identity for e in gallery.entries])
    metrics = retrieval_metrics(similarity(learned.embed_texts(captions), gallery.embeddings), query_ids, gallery_ids)
    assert metrics["map"] > 1.5 * chance_average_precision(len(test), 3), metrics  # see test_tiny_run_beats_chance
    assert runtime_recall(results, query_ids, 1) == pytest.approx(metrics["r1"])  # the top-k agrees
    assert runtime_recall(results, query_ids, 10) > runtime_recall(results, query_ids, 1)
    first = results[0][0]
    assert first.path == gallery.entries[first.row].path and first.rank == 1


def test_rank_command_json_equals_the_api(gallery_path, records, search):
    query = records[0].captions[0]
    result = CliRunner().invoke(rank_command, ["--gallery", str(gallery_path), "--query", query, "-k", "10",
                                               "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # the bundle came from g.json
    assert [d["rank"] for d in document] == list(range(1, 11))
    expected = search.rank(query, load_gallery(gallery_path), k=10)[0]
    assert [d["path"] for d in document] == [m.path for m in expected]
    np.testing.assert_allclose([d["score"] for d in document], [m.score for m in expected], atol=1e-5)
    assert all(a >= b for a, b in zip([d["score"] for d in document], [d["score"] for d in document][1:]))


def test_runtime_reproduces_pytorch(search, records, tiny_checkpoint):
    """Preprocessing, tokenizing and the ONNX towers against the training code's own evaluation path."""
    from tbps_runtime.model.tokenizer import load_tokenizer
    from tbps_train.checkpoint import load_checkpoint, model_from_checkpoint
    from tbps_train.data.pipeline import ImageStore
    from tbps_train.evaluate import embed_images, embed_texts

    payload = load_checkpoint(tiny_checkpoint)
    model, config = model_from_checkpoint(payload)
    subset = records[:9]
    store = ImageStore(subset, config.model.image_size, progress=False)
    expected_images = embed_images(model, store).numpy()
    np.testing.assert_allclose(search.embed_images([r.image_path for r in subset]), expected_images, atol=1e-4)
    crops = [np.asarray(Image.open(r.image_path).convert("RGB")) for r in subset]  # as a detector hands them over
    np.testing.assert_allclose(search.embed_images(crops), expected_images, atol=1e-4)
    captions = [c for r in subset for c in r.captions] + ["a", "🙂 " * 3]
    tokenizer = load_tokenizer(search.directory.joinpath(search.manifest.tokenizer).read_text(),
                               search.manifest.max_text_length)
    expected_texts = embed_texts(model, tokenizer, captions).numpy()
    np.testing.assert_allclose(search.embed_texts(captions, batch_size=5), expected_texts, atol=1e-4)


def test_shapes_of_empty_inputs(search):
    k, d = search.manifest.num_slots, search.manifest.embed_dim
    assert search.embed_texts([]).shape == (0, k, d)
    assert search.embed_images([]).shape == (0, k, d)
    assert search.rank([], np.zeros((3, k, d), np.float32)) == []
