"""The hostile-user sweep of issue 13, kept as a battery: the cases that found defects and a sample of
each class it covered, across the commands.

Every refused case asserts exit status 2, exactly one ``error:`` line, no traceback, nothing left in the
directory it ran in and the files it was pointed at byte-identical. The classes, and the one mechanism each:

- an empty path: every path option of every command refuses ``""`` (``TbpsCommand``'s path type);
- numbers beyond reason: ``--threads`` bounded (``MAX_THREADS``); every field of a run config typed, finite
  and bounded, from the command line or a checkpoint (:func:`tbps_train.config.check_fields`); a
  synthetic dataset sized against its disk first (:func:`tbps_runtime.synth.dataset.generate`);
- files that are not JSON (nesting too deep to parse, a 5000-digit integer): the one JSON reader,
  :func:`tbps_runtime.atomic.read_json`, raises ``ValueError`` for both;
- records with fields of the wrong type: :func:`tbps_runtime.contract.mistyped_fields` (a manifest,
  a run config), a gallery's entries, a checkpoint's version and training state;
- a checkpoint whose config lies about its weights: its model built on PyTorch's meta device and
  compared with them before anything is allocated (:func:`tbps_train.checkpoint.model_from_checkpoint`);
- outputs that are not tbps's to replace: ``train -o`` over a dataset's files or anybody's
  (:func:`tbps_train.checkpoint.check_checkpoint_output`);
- an error after work that logs stays the only line: ``rank`` logs its search last; a FAISS spec that
  cannot be trained on the gallery is one line that says the gallery itself is complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from runtime_fakes import solid_image

from cli_assertions import assert_user_error, index, run
from tbps_runtime.cli import main as tbps

DEEP = "[" * 100_000 + "]" * 100_000  # beyond the JSON parser's recursion limit
LONG_INT = "7" * 5000  # beyond Python's 4300-digit int conversion limit
UNPARSABLE = {"deep": DEEP, "long-int": '{"format": "x", "version": ' + LONG_INT + "}"}


def files(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes: what a refused command must leave as it was."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_refused(args: list, where: Path, *fragments: str) -> None:
    """``tbps ARGS`` is one error line (holding ``fragments``) and leaves ``where`` byte for byte as it was."""
    before = files(where)
    assert_user_error(run(tbps, args), *fragments)
    assert files(where) == before


def edited_json(source: Path, target: Path, **changes) -> Path:
    data = json.loads(source.read_text())
    data.update(changes)
    target.write_text(json.dumps(data))
    return target


@pytest.fixture(autouse=True)
def _torch_threads_kept():
    """Commands run in this process set PyTorch's thread count (tbps_runtime.threads): restore it."""
    import torch

    count = torch.get_num_threads()
    yield
    torch.set_num_threads(count)


@pytest.fixture()
def bundle_copy(fake_bundle, tmp_path) -> Path:
    shutil.copytree(fake_bundle, tmp_path / "b")
    return tmp_path / "b"


@pytest.fixture()
def dataset_copy(synth_root, tmp_path) -> Path:
    shutil.copytree(synth_root, tmp_path / "data")
    return tmp_path / "data"


def _index(bundle, images, output) -> list:
    return ["index", "--bundle", bundle, "--images", images, "-o", output, "--quiet"]


# ---- an empty path names nothing -------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["synth", "-o", ""],
    ["index", "--bundle", "{bundle}", "--images", "{images}", "-o", ""],
    ["index", "--bundle", "", "--images", "{images}", "-o", "g.npy"],
    ["rank", "--gallery", "", "--query", "red"],
    ["rank", "--gallery", "{gallery}", "--query", "red", "--show", ""],
    ["export", "--ckpt", "m.pt", "-o", ""],
    ["train", "--dataset", "cuhk-pedes", "--root", "", "-o", "m.pt"],
], ids=["synth-o", "index-o", "index-bundle", "rank-gallery", "rank-show", "export-o", "train-root"])
def test_an_empty_path_is_refused(args, fake_bundle, images, gallery, tmp_path, monkeypatch):
    """An empty path would be the current directory (synth -o '' wrote its dataset there)."""
    monkeypatch.chdir(tmp_path)
    args = [a.format(bundle=fake_bundle, images=images, gallery=gallery) for a in args]
    assert_refused(args, tmp_path, "an empty path")


# ---- numbers beyond reason ---------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["index", "rank", "eval", "train"])
@pytest.mark.parametrize("threads", ["99999999999999999999", "100000"])
def test_thread_counts_beyond_reason_are_refused(command, threads, fake_bundle, images, gallery, tmp_path):
    """10**20 was a traceback (an int32 overflow), 100000 a hang or a MemoryError."""
    args = {"index": _index(fake_bundle, images, tmp_path / "g.npy"),
            "rank": ["rank", "--gallery", gallery, "--bundle", fake_bundle, "--query", "red"],
            "eval": ["eval", "--ckpt", tmp_path / "m.pt", "--dataset", "cuhk-pedes", "--root", tmp_path],
            "train": ["train", "--dataset", "cuhk-pedes", "--root", tmp_path, "-o", tmp_path / "m.pt"]}[command]
    assert_refused([*args, "--threads", threads], tmp_path, "--threads", "1<=x<=1024")


@pytest.mark.parametrize("option, fragment", [
    (["--lr", "nan"], "train.lr is nan"),
    (["--lr", "inf"], "train.lr is inf"),
    (["--margin", "nan"], "loss.margin is nan"),
    (["--image-lr-scale", "-1"], "train.image_backbone_lr_scale is -1"),
    (["--token-init-std", "nan"], "model.token_init_std is nan"),
    (["--seed", "-1"], "train.seed is -1"),
    (["--seed", str(2 ** 64)], "train.seed"),
    (["--epochs", "99999999999999999999"], "train.epochs"),
    (["--image-size", "65536", "32"], "model.image_size is (65536, 32)"),
    (["--num-coarse", "100000"], "model.num_coarse is 100000"),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_a_run_config_beyond_reason_is_refused_before_training(option, fragment, synth_root, tmp_path):
    """NaN and infinite rates trained to exit 0; a 65536-pixel image crashed (double free), a huge
    seed or token count was a traceback or a hang."""
    args = ["train", "--dataset", "cuhk-pedes", "--root", synth_root, "--preset", "tiny", "-o", tmp_path / "m.pt"]
    assert_refused([*args, *option], tmp_path, fragment)


def test_config_fields_are_typed_whatever_their_source():
    from tbps_runtime.errors import ConfigError
    from tbps_train.config import RunConfig, load_preset

    load_preset("tiny").validate()
    for section, field, value in [("model", "use_coarse", "no"), ("model", "embed_dim", "32"),
                                  ("train", "batch_size", 8.0), ("model", "image_size", (64,)),
                                  ("train", "flip_probability", 2.0), ("model", "num_heads", True)]:
        data = load_preset("tiny").to_dict()
        data[section][field] = list(value) if isinstance(value, tuple) else value
        config = RunConfig.from_dict(data)
        with pytest.raises(ConfigError, match=f"{section}.{field} is "):
            config.validate()


@pytest.mark.parametrize("option, fragment", [(["--seed", "-1"], "seed must be"),
                                              (["--ids", "99999999999999999999"], "not enough free disk space"),
                                              (["--images-per-id", "99999999999999999999"], "not enough free disk")],
                         ids=["seed", "ids", "images-per-id"])
def test_synth_refuses_what_it_cannot_draw_or_hold(option, fragment, tmp_path):
    """A negative seed was numpy's traceback; 10**20 identities ran until killed."""
    assert_refused(["synth", "-o", tmp_path / "d", "--ids", "3", *option], tmp_path, fragment)


# ---- files that are not JSON -------------------------------------------------------------------------

@pytest.mark.parametrize("content", list(UNPARSABLE), ids=list(UNPARSABLE))
@pytest.mark.parametrize("victim", ["manifest.json", "g.json", "g.json beside -o", "reid_raw.json"])
def test_files_that_are_not_json_are_one_error(victim, content, fake_bundle, images, gallery, synth_root, tmp_path):
    """Each was a RecursionError or a ValueError traceback; every reader now goes through read_json."""
    text = UNPARSABLE[content]
    if victim == "manifest.json":
        shutil.copytree(fake_bundle, tmp_path / "b")
        (tmp_path / "b" / victim).write_text(text)
        args, fragment = _index(tmp_path / "b", images, tmp_path / "g.npy"), "is not valid JSON"
    elif victim == "g.json":
        shutil.copy(gallery, tmp_path / "g.npy")
        (tmp_path / "g.json").write_text(text)
        args, fragment = ["rank", "--gallery", tmp_path / "g.npy", "--bundle", fake_bundle, "--query", "red"], "g.json"
    elif victim == "g.json beside -o":
        (tmp_path / "g.json").write_text(text)
        args, fragment = _index(fake_bundle, images, tmp_path / "g.npy"), "not a tbps gallery description"
    else:
        shutil.copytree(synth_root, tmp_path / "data")
        (tmp_path / "data" / victim).write_text(text)
        args = ["train", "--dataset", "cuhk-pedes", "--root", tmp_path / "data", "--preset", "tiny",
                "-o", tmp_path / "m.pt", "--quiet"]
        fragment = "not readable JSON"
    assert_refused(args, tmp_path, fragment)


@pytest.mark.parametrize("content", list(UNPARSABLE), ids=list(UNPARSABLE))
def test_an_unparsable_partial_index_is_started_over(content, fake_bundle, images, tmp_path):
    output = tmp_path / "g.npy"
    np.lib.format.open_memmap(tmp_path / ".g.npy.partial.npy", mode="w+", dtype=np.float32, shape=(6, 3, 4))
    (tmp_path / ".g.npy.partial.json").write_text(UNPARSABLE[content])
    index(fake_bundle, images, output)
    assert np.isfinite(np.load(output)).all() and sorted(p.name for p in tmp_path.iterdir()) == ["g.json", "g.npy"]


# ---- records with fields of the wrong type -----------------------------------------------------------

def _towers(**entries):
    return lambda towers: {**towers, **entries}


@pytest.mark.parametrize("field, value, fragment", [
    ("version", True, "bundle version True"),
    ("version", -5, "bundle version -5"),
    ("opset", "18", "opset is '18'"),
    ("slot_names", [1, 2, 3], "slot_names is [1, 2, 3]"),
    ("fingerprint", "", "fingerprint is empty"),
    ("max_text_length", 1, "max_text_length"),
    ("files", "add ../outside.onnx", "'../outside.onnx'"),
    ("towers", _towers(image_tower="x", text_tower=None), "towers is"),
    ("towers", lambda t: {**t, "text_tower": {**t["text_tower"], "file": "../other.bundle/text_tower.onnx"}},
     "towers['text_tower']"),
    ("towers", lambda t: {**t, "image_tower": {**t["image_tower"], "outputs": []}}, "towers['image_tower']"),
], ids=["version-true", "version-negative", "opset-string", "slot-names-ints", "fingerprint-empty",
        "text-length-1", "file-outside", "tower-entries-not-objects", "tower-file-outside", "tower-no-outputs"])
def test_a_manifest_field_of_the_wrong_type_is_refused(field, value, fragment, bundle_copy, images, tmp_path):
    """Each of these loaded and indexed (exit 0): nothing looked at the field, or at the towers' entries."""
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    if field == "files":
        value = {**manifest["files"], "../outside.onnx": "0" * 64}
    elif callable(value):
        value = value(manifest["towers"])
    edited_json(bundle_copy / "manifest.json", bundle_copy / "manifest.json", **{field: value})
    assert_refused(_index(bundle_copy, images, tmp_path / "g.npy"), tmp_path, fragment)


def test_a_tokenizer_that_is_not_utf8_is_refused(bundle_copy, images, tmp_path):
    """Even with its checksum updated: a UnicodeDecodeError traceback before."""
    (bundle_copy / "tokenizer.json").write_bytes(b'{"version": "1.0", "model": "caf\xe9"}')
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["files"]["tokenizer.json"] = hashlib.sha256((bundle_copy / "tokenizer.json").read_bytes()).hexdigest()
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    assert_refused(_index(bundle_copy, images, tmp_path / "g.npy"), tmp_path, "tokenizer.json is not UTF-8")


@pytest.mark.parametrize("changes, fragment", [
    ({"entries": [{"path": "a.png", "identity": {"id": 1}}] * 6}, "mistypes entries"),
    ({"entries": [{"path": "a\x00.png"}] * 6}, "mistypes entries"),
    ({"unreadable": [1, 2]}, "mistypes unreadable"),
], ids=["identity-dict", "path-nul", "unreadable-ints"])
def test_a_gallery_record_of_the_wrong_type_is_refused(changes, fragment, fake_bundle, gallery, tmp_path):
    """Ranked with exit 0 before: the entries' types were never looked at."""
    shutil.copy(gallery, tmp_path / "g.npy")
    edited_json(gallery.with_suffix(".json"), tmp_path / "g.json", **changes)
    assert_refused(["rank", "--gallery", tmp_path / "g.npy", "--bundle", fake_bundle, "--query", "red"],
                   tmp_path, fragment)


def test_a_list_identity_too_long_for_an_int_stays_text(fake_bundle, images, tmp_path):
    """A 5000-digit identity was a ValueError traceback; now it is an identity like any text one."""
    listed = tmp_path / "list.txt"
    listed.write_text(f"{sorted(images.iterdir())[0]}\t{LONG_INT}\n", encoding="utf-8")
    index(fake_bundle, listed, tmp_path / "g.npy")
    (entry,) = json.loads((tmp_path / "g.json").read_text())["entries"]
    assert entry["identity"] == LONG_INT


# ---- checkpoints that lie ----------------------------------------------------------------------------

def _hidden(size):
    return lambda payload: {**payload["text_backbone_config"], "hidden_size": size, "intermediate_size": size}


def _model(**values):
    return lambda payload: {**payload["config"], "model": {**payload["config"]["model"], **values}}


@pytest.mark.parametrize("field, change, fragment", [
    ("version", True, "format version True"),
    ("version", -1, "format version -1"),
    ("num_identities", 0, "num_identities 0"),
    ("num_identities", 10 ** 12, "do not fit its own config"),
    ("text_backbone_config", _hidden(10 ** 7), "do not fit its own config"),
    ("config", _model(num_heads=0), "model.num_heads is 0"),
    ("config", _model(embed_dim="32"), "model.embed_dim is '32'"),
    ("config", _model(image_size=[100000, 100000]), "model.image_size"),
    ("config", _model(max_text_length=10 ** 9), "model.max_text_length"),
    ("state_dict", lambda p: {k: 1 for k in p["state_dict"]}, "do not fit its own config"),
    ("train_state", {"epoch": "x"}, "malformed train_state"),
], ids=["version-true", "version-negative", "no-identities", "identities-1e12", "hidden-1e7", "heads-0",
        "dim-string", "image-1e5", "text-length-1e9", "weights-ints", "train-state"])
def test_a_checkpoint_that_lies_is_refused_before_allocating(field, change, fragment, tiny_checkpoint, tmp_path):
    """A 10**12-identity classifier or a 10**7-wide text backbone asked for 128 TB and 1.2 TB (tracebacks);
    0 heads divided by zero; a negative version was read."""
    import torch

    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload[field] = change(payload) if callable(change) else change
    torch.save(payload, tmp_path / "m.pt")
    assert_refused(["eval", "--ckpt", tmp_path / "m.pt", "--dataset", "cuhk-pedes", "--root", tmp_path],
                   tmp_path, fragment)


# ---- outputs that are not tbps's to replace ----------------------------------------------------------

@pytest.mark.parametrize("output", ["reid_raw.json", "imgs/SYNTH/00001_00.png", "notes.txt"])
def test_train_never_writes_over_what_it_did_not_write(output, dataset_copy, tmp_path):
    """train -o data/reid_raw.json replaced the dataset's annotations with a checkpoint (exit 0)."""
    (dataset_copy / "notes.txt").write_text("precious")
    args = ["train", "--dataset", "cuhk-pedes", "--root", dataset_copy, "--preset", "tiny",
            "-o", dataset_copy / output, "--quiet"]
    assert_refused(args, tmp_path, "is not a tbps checkpoint")


# ---- an error after logged work is still the only line -----------------------------------------------

@pytest.mark.parametrize("extra, fragment", [
    (["--show", "{gallery}"], "would overwrite the gallery"),
    (["--html", "{bundle}/manifest.json"], "would overwrite a file of the bundle"),
    (["--explain", "--html", "{tmp}/r.html"], "has no text_tower.explain.onnx"),
], ids=["show-gallery", "html-manifest", "explain-without-graphs"])
def test_an_error_after_ranking_is_the_only_line(extra, fragment, bundle_copy, gallery, tmp_path):
    """Without -q, the 'search: ...' line came before these errors: two lines."""
    shutil.copy(gallery, tmp_path / "g.npy")
    shutil.copy(gallery.with_suffix(".json"), tmp_path / "g.json")
    extra = [e.format(gallery=tmp_path / "g.npy", bundle=bundle_copy, tmp=tmp_path) for e in extra]
    assert_refused(["rank", "--gallery", tmp_path / "g.npy", "--bundle", bundle_copy, "--query", "red", *extra],
                   tmp_path, fragment)


def test_a_faiss_spec_too_big_for_the_gallery_is_one_error(fake_bundle, images, tmp_path):
    """IVF1024 over 6 rows was FAISS's traceback; the gallery itself is whole and says so (logged
    after the index, so without --quiet the error is still the only line)."""
    pytest.importorskip("faiss")
    from tbps_runtime.gallery.open import load_gallery

    args = ["index", "--bundle", fake_bundle, "--images", images, "-o", tmp_path / "g.npy", "--faiss", "IVF1024,Flat"]
    result = run(tbps, [*args, "--quiet"])
    assert_user_error(result, "cannot be trained on 6 gallery row(s)", "is complete, without a FAISS index")
    gallery = load_gallery(tmp_path / "g.npy")
    assert len(gallery) == 6 and gallery.faiss is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.json", "g.npy"]
    loud = run(tbps, args)  # progress bars, but no "indexed ..." line before the error
    assert loud.exit_code == 2 and loud.stderr.splitlines()[-1].startswith("error: ")
    assert "indexed 6 image(s)" not in loud.stderr and "Traceback" not in loud.output


@pytest.mark.parametrize("captions, fragment", [(["\u200b\u200c", "\x00\x00"], "no non-empty caption"),
                                                (["a man"], "'id' is")], ids=["invisible", "id-1e30"])
def test_annotations_read_as_queries_are(captions, fragment, tmp_path):
    """Captions of invisible characters only trained (the runtime refuses them as queries); an id of
    10**30 was an OverflowError traceback."""
    from tbps_runtime.errors import DataError
    from tbps_train.data.readers import read_split

    (tmp_path / "imgs").mkdir()
    solid_image(tmp_path / "imgs" / "a.png", "red")
    entry = {"split": "train", "id": 10 ** 30 if fragment == "'id' is" else 1, "file_path": "a.png",
             "captions": captions}
    (tmp_path / "reid_raw.json").write_text(json.dumps([entry]))
    with pytest.raises(DataError, match=fragment):
        read_split("cuhk-pedes", tmp_path, "train")
    entry.update(id=1, captions=["a man in red", *captions])  # the control: one visible caption is enough
    (tmp_path / "reid_raw.json").write_text(json.dumps([entry]))
    (record,) = read_split("cuhk-pedes", tmp_path, "train")
    assert record.captions[0] == "a man in red"
