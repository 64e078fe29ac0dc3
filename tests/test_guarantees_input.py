"""What tbps guarantees against hostile input and failing systems (issue 13, later sections), case by case.

Every case is one ``error:`` line on stderr, exit status 2, no traceback and no leftover file.
The classes, and the one mechanism each:

- names read from files (manifest, ``g.json``, annotations) stay inside their root:
  :func:`tbps_runtime.paths.resolve_inside`;
- a bundle's manifest agrees with its graphs and sane limits, and every tower call returns its
  batch: :func:`tbps_runtime.model.bundle.check_sizes`, :func:`tbps_runtime.model.backends.check_graph`,
  :meth:`tbps_runtime.model.encoder.Encoder.run_tower`; the explain graphs through the same checks
  (:func:`tbps_runtime.model.bundle.check_towers` for their entries, :meth:`Encoder.run_graph` for their calls);
- text: :func:`tbps_runtime.text.check_queries` refuses undecodable and invisible-only
  queries; :func:`tbps_runtime.paths.printable` makes non-UTF-8 file names printable;
- operating-system errors become one line at the command-line boundary
  (:func:`tbps_runtime.clikit.os_error_message`); ``tbps train`` checks its output
  (:func:`tbps_runtime.outputs.check_writable`) and its device (:func:`tbps_train.distributed.check_device`)
  before training;
- crafted metadata (checkpoints, ``g.json``, list files, partial-index state, shard counts) is type- and range-checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper
from runtime_fakes import solid_image

from cli_assertions import assert_user_error, index, run
from tbps_runtime.cli.search import index_command, rank_command
from tbps_runtime.contract import IMAGE_EXPLAIN_TOWER, IMAGE_TOWER, TEXT_EXPLAIN_TOWER, TEXT_TOWER
from tbps_runtime.errors import DataError, QueryError, UnsafePathError
from tbps_runtime.paths import printable, resolve_inside
from tbps_runtime.text import check_queries

ROOT = Path(__file__).resolve().parents[1]


# ---- helpers ----------------------------------------------------------------------------------------

def listing(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


def as_result(process: subprocess.CompletedProcess) -> SimpleNamespace:
    stdout, stderr = (s.decode("utf-8", "replace") if isinstance(s, bytes) else s
                      for s in (process.stdout, process.stderr))
    return SimpleNamespace(exit_code=process.returncode, stderr=stderr, stdout=stdout, output=stdout + stderr)


def tbps(args: list, env: dict | None = None, stdin: bytes | None = None, prelude: str = "") -> SimpleNamespace:
    """``tbps ARGS`` in a process of its own; ``args`` may hold bytes (argv that is not UTF-8)."""
    code = f"{prelude}\nfrom tbps_runtime.cli import main; main(prog_name='tbps')"
    argv = [a if isinstance(a, bytes) else str(a) for a in args]
    process = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, input=stdin,
                             env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=300)
    return as_result(process)


def copy_bundle(fake_bundle: Path, tmp_path: Path, **changes) -> Path:
    """A copy of the fake bundle with ``changes`` made to its manifest."""
    bundle = tmp_path / "m.bundle"
    shutil.copytree(fake_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.update(changes)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def edit_sidecar(gallery: Path, tmp_path: Path, **changes) -> Path:
    """A copy of ``gallery`` (g.npy + g.json) with ``changes`` made to its g.json."""
    folder = tmp_path / "edited"
    folder.mkdir()
    shutil.copy(gallery, folder / gallery.name)
    meta = json.loads(gallery.with_suffix(".json").read_text())
    meta.update(changes)
    (folder / gallery.name).with_suffix(".json").write_text(json.dumps(meta))
    return folder / gallery.name


def assert_index_refused(bundle: Path, images: Path, tmp_path: Path, *fragments: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = run(index_command, ["--bundle", bundle, "--images", images, "-o", out / "g.npy", "--quiet"])
    assert_user_error(result, *fragments)
    assert listing(out) == []


# ---- 1. nothing outside where the user pointed --------------------------------------------------------

@pytest.mark.parametrize("name", ["../other.bundle/tokenizer.json", "/etc/hostname", "sub/../../x.json",
                                  "..", "C:\\x.json", "\\\\host\\x", "a\x00b", "", 7, None])
def test_resolve_inside_refuses_every_escape(name, tmp_path):
    with pytest.raises(UnsafePathError, match="'tokenizer'"):
        resolve_inside(tmp_path, name, "manifest.json: 'tokenizer'")


@pytest.mark.parametrize("name", ["tokenizer.json", "sub/tokenizer.json", "./a..b.json"])
def test_resolve_inside_keeps_names_inside(name, tmp_path):
    assert resolve_inside(tmp_path, name, "x") == tmp_path / name


@pytest.mark.parametrize("tokenizer", ["../outside/tokenizer.json", "/etc/hostname", "../../etc/hostname"])
def test_a_manifest_never_points_outside_its_bundle(tokenizer, fake_bundle, images, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(fake_bundle / "tokenizer.json", outside / "tokenizer.json")
    bundle = copy_bundle(fake_bundle, tmp_path, tokenizer=tokenizer,
                         files={**json.loads((fake_bundle / "manifest.json").read_text())["files"],
                                tokenizer: hashlib.sha256((fake_bundle / "tokenizer.json").read_bytes()).hexdigest()})
    assert_index_refused(bundle, images, tmp_path, "'tokenizer'", "stays inside")


@pytest.mark.parametrize("file", ["../../secret.faiss", "/etc/hostname", "sub/../../x.faiss"])
def test_a_gallery_never_points_outside_its_directory(file, fake_bundle, gallery, tmp_path):
    edited = edit_sidecar(gallery, tmp_path, faiss={"file": file, "spec": "Flat"})
    result = run(rank_command, ["--gallery", edited, "--bundle", fake_bundle, "--query", "red"])
    assert_user_error(result, "faiss 'file'", "stays inside")


@pytest.mark.parametrize("file_path", ["../../outside/secret.png", "a/../../b.png", "/abs.png"])
def test_an_annotation_never_points_outside_the_images(file_path, tmp_path):
    from tbps_train.data.readers import read_split

    root = tmp_path / "data"
    (root / "imgs").mkdir(parents=True)
    (root / "reid_raw.json").write_text(json.dumps([{"split": "train", "id": 1, "file_path": file_path,
                                                     "captions": ["a man"]}]))
    with pytest.raises(DataError, match="file_path"):
        read_split("cuhk-pedes", root, "train", check_images=False)


# ---- 2. the manifest agrees with its graphs -----------------------------------------------------------

@pytest.mark.parametrize("changes, fragment", [
    ({"num_slots": 4, "num_fine": 2, "slot_names": ["g", "c", "f1", "f2"]}, "does not match its manifest"),
    ({"embed_dim": 8}, "does not match its manifest"),
    ({"image_size": [100000, 100000]}, "image_size"),
    ({"image_size": [16]}, "image_size"),
    ({"std": [0, 0, 0]}, "std"),
    ({"std": [0.2, -0.2, 0.2]}, "std"),
    ({"mean": [float("nan"), 0.4, 0.4]}, "mean"),
    ({"mean": ["red", 0.4, 0.4]}, "mean"),
    ({"num_slots": 5000}, "num_slots"),
    ({"embed_dim": 0}, "embed_dim"),
    ({"max_text_length": 10 ** 9}, "max_text_length"),
    ({"num_coarse": 5}, "num_slots"),
    ({"slot_names": ["one"]}, "slot_names"),
    ({"files": "everything"}, "files"),
    ({"towers": []}, "towers"),
], ids=lambda v: None if isinstance(v, str) else "-".join(f"{k}" for k in v))
def test_a_manifest_that_lies_is_refused_at_load(changes, fragment, fake_bundle, images, tmp_path):
    bundle = copy_bundle(fake_bundle, tmp_path, **changes)
    assert_index_refused(bundle, images, tmp_path, fragment)


def _batch_one_text_tower(bundle: Path, declare_batch_one: bool) -> None:
    """Replace the bundle's text tower by one that returns the first query's embeddings only."""
    _first_row_only(bundle, TEXT_TOWER.onnx_file, "embeddings", declare_batch_one)


def _first_row_only(bundle: Path, file: str, output: str, declare_batch_one: bool) -> None:
    """Make the graph ``file`` return only the first row of its ``output`` (the manifest's checksum updated)."""
    model = onnx.load(bundle / file)
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["all_rows" if o == output else o for o in node.output]
    graph.initializer.extend([numpy_helper.from_array(np.array([v], np.int64), n)
                              for n, v in (("zero", 0), ("one", 1))])
    graph.node.append(helper.make_node("Slice", ["all_rows", "zero", "one", "zero"], [output]))
    if declare_batch_one:
        next(o for o in graph.output if o.name == output).type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, bundle / file)
    _rehash(bundle, file)


def _rehash(bundle: Path, file: str) -> None:
    """Record ``file``'s new SHA-256 in the manifest: what a tamperer who knows the format would do."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][file] = hashlib.sha256((bundle / file).read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("declare_batch_one, fragment", [(True, "does not match its manifest"),
                                                          (False, "for a batch of 3")],
                         ids=["declared", "hidden"])
def test_a_text_tower_that_ignores_its_batch_is_refused(declare_batch_one, fragment, fake_bundle, gallery, tmp_path):
    bundle = copy_bundle(fake_bundle, tmp_path)
    _batch_one_text_tower(bundle, declare_batch_one)
    result = run(rank_command, ["--gallery", gallery, "--bundle", bundle, "--query", "red", "--query", "blue",
                                "--query", "green", "--json"])
    assert_user_error(result, fragment)
    assert result.stdout == ""


# The explain graphs (tbps export --explain) get the towers' checks: their manifest entries at load, their
# declared I/O when their session is created, each call's outputs against its batch.

def _explain_entry(bundle: Path, tower: str, **changes) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["towers"][tower].update(changes)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _attention_shape(bundle: Path, shape: list) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    embeddings, _ = manifest["towers"][IMAGE_EXPLAIN_TOWER.name]["outputs"]
    _explain_entry(bundle, IMAGE_EXPLAIN_TOWER.name,
                   outputs=[embeddings, {"name": "attention", "dtype": "float32", "shape": shape}])


def _swap_graph(bundle: Path, file: str, other: str) -> None:
    shutil.copy(bundle / other, bundle / file)
    _rehash(bundle, file)


@pytest.mark.parametrize("tamper, fragment", [
    (lambda b: _explain_entry(b, IMAGE_EXPLAIN_TOWER.name, outputs="everything"), "image_tower.explain"),
    (lambda b: _explain_entry(b, TEXT_EXPLAIN_TOWER.name, inputs=[]), "text_tower.explain"),
    (lambda b: _attention_shape(b, ["batch", 2, 4]), "feature_width None"),
    (lambda b: _attention_shape(b, ["batch", 2, 100000, 100000]), "feature_height 100000"),
    (lambda b: _attention_shape(b, ["batch", 3, 4, 2]), "image_tower.explain.onnx does not match its manifest"),
    (lambda b: _attention_shape(b, ["batch", 2, 4, 2.0]), "feature_width 2.0"),
    (lambda b: _swap_graph(b, IMAGE_EXPLAIN_TOWER.onnx_file, TEXT_EXPLAIN_TOWER.onnx_file), "takes inputs"),
    (lambda b: _swap_graph(b, IMAGE_EXPLAIN_TOWER.onnx_file, IMAGE_TOWER.onnx_file), "gives outputs"),
    (lambda b: _swap_graph(b, TEXT_EXPLAIN_TOWER.onnx_file, "tokenizer.json"), "onnxruntime cannot load"),
    (lambda b: _first_row_only(b, IMAGE_EXPLAIN_TOWER.onnx_file, "attention", True), "does not match its manifest"),
    (lambda b: _first_row_only(b, IMAGE_EXPLAIN_TOWER.onnx_file, "attention", False), "for a batch of 3"),
], ids=["entry-not-a-list", "entry-no-inputs", "attention-rank", "attention-huge", "attention-other-tokens",
        "attention-float-dim", "text-graph-as-image", "plain-tower-as-explain", "not-onnx",
        "image-batch-declared", "image-batch-hidden"])
def test_a_tampered_explain_graph_is_refused(tamper, fragment, exported_bundle, explain_gallery, tmp_path):
    """The exported (real) bundle's explain graphs, each tampered one way: --explain is one error line and
    writes no page. Its three results make the image graph's batch 3."""
    bundle = tmp_path / "m.bundle"
    shutil.copytree(exported_bundle, bundle)
    tamper(bundle)
    page = tmp_path / "r.html"
    result = run(rank_command, ["--gallery", explain_gallery, "--bundle", bundle, "--query", "a red coat",
                                "-k", 3, "--explain", "--html", page])
    assert_user_error(result, fragment)
    assert not page.exists()


@pytest.fixture(scope="module")
def explain_gallery(exported_bundle, tmp_path_factory) -> Path:
    """Three crops indexed with the exported bundle (a copy of it, tampered or not, ranks them too)."""
    folder = tmp_path_factory.mktemp("explain")
    for colour in ("red", "green", "blue"):
        solid_image(folder / f"{colour}.png", colour)
    index(exported_bundle, folder, folder / "g.npy")
    return folder / "g.npy"


def test_every_explain_call_returns_its_batch(exported_bundle, explain_gallery, tmp_path):
    """The text graph too, at a batch the command line never uses (3 captions); the untampered
    bundle, the control, answers the same calls."""
    from tbps_runtime.errors import BundleError
    from tbps_runtime.model.attention import explain, text_attention
    from tbps_runtime.model.encoder import Encoder

    captions = ["a red coat", "blue jeans and a white shirt", "a woman"]
    encoder = Encoder.from_bundle(exported_bundle, threads=1)
    ids, _, attention = text_attention(encoder, captions)
    sizes = encoder.manifest.tower_sizes(TEXT_EXPLAIN_TOWER)
    assert attention.shape == (3, sizes["decoder_tokens"], ids.shape[1])
    crops = sorted(str(p) for p in explain_gallery.parent.glob("*.png"))
    maps = explain(encoder, captions[0], crops).maps
    sizes = encoder.manifest.tower_sizes(IMAGE_EXPLAIN_TOWER)
    assert maps.shape == (3, sizes["coarse"], sizes["feature_height"], sizes["feature_width"])
    assert explain(encoder, captions[0], []).maps.shape == (0, *maps.shape[1:])

    bundle = tmp_path / "m.bundle"
    shutil.copytree(exported_bundle, bundle)
    _first_row_only(bundle, TEXT_EXPLAIN_TOWER.onnx_file, "attention", False)
    tampered = Encoder.from_bundle(bundle, threads=1)
    text_attention(tampered, captions[:1])  # a batch of one cannot tell
    with pytest.raises(BundleError, match="returned attention of shape \\(1, .* for a batch of 3"):
        text_attention(tampered, captions)


# ---- 3. text ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("query, fragment", [
    ("a man \udcff in red", "not valid UTF-8"),
    ("\u200b\u200c\u200d", "invisible"),
    ("\u200e\u200f\u202e\u2066", "invisible"),
    ("\x00\x00\x00", "invisible"),
    ("\ufeff \t", "invisible"),
    ("", "empty"),
])
def test_queries_that_say_nothing_are_refused(query, fragment, fake_bundle, gallery):
    with pytest.raises(QueryError, match=fragment):
        check_queries([query])
    result = run(rank_command, ["--gallery", gallery, "--bundle", fake_bundle, "--query", query])
    assert_user_error(result, "query 1", fragment)


def test_visible_text_with_marks_is_still_a_query():
    check_queries(["a woman\u200b in red", "caf\u00e9 \u202eshirt"])


def test_undecodable_query_bytes_on_the_command_line_and_stdin(fake_bundle, gallery):
    common = ["rank", "--gallery", gallery, "--bundle", fake_bundle]
    for env in ({}, {"PYTHONIOENCODING": "utf-8"}):
        assert_user_error(tbps([*common, "--query", b"a man \xff in red"], env=env), "not valid UTF-8")
        assert_user_error(tbps([*common, "--queries", "-"], env=env, stdin=b"red\na man \xff in red\n"),
                          "standard input is not UTF-8")


@pytest.fixture(scope="module")
def latin1_gallery(fake_bundle, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("latin1")
    solid_image(Path(os.fsdecode(bytes(folder) + b"/caf\xe9.png")), "red")
    output = folder / "g.npy"
    index(fake_bundle, folder, output)
    return output


def test_printable_escapes_undecodable_bytes_only():
    assert printable(os.fsdecode(b"/x/caf\xe9.png")) == "/x/caf\\xe9.png"
    assert printable("/x/café.png") == "/x/café.png"
    assert printable("\ud800") == "\\ud800"


@pytest.mark.parametrize("extra", [[], ["--json"], ["--html", "r.html"]], ids=["plain", "json", "html"])
def test_non_utf8_file_names_print_under_utf8_io(extra, fake_bundle, latin1_gallery, tmp_path):
    extra = [str(tmp_path / e) if e.endswith(".html") else e for e in extra]
    result = tbps(["rank", "--gallery", latin1_gallery, "--bundle", fake_bundle, "--query", "red", *extra],
                  env={"PYTHONIOENCODING": "utf-8"})
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    if "--json" in extra:
        (match,) = json.loads(result.stdout)
        assert match["path"].endswith("caf\\xe9.png")
        match["path"].encode("utf-8")  # no lone surrogate survives
    else:
        assert "caf\\xe9.png" in (result.stdout if not extra else (tmp_path / "r.html").read_text("utf-8"))


# ---- 4. operating-system errors -----------------------------------------------------------------------

def test_an_output_under_a_regular_file_is_one_error(fake_bundle, images, gallery, tmp_path):
    blocker = tmp_path / "m.pt"
    blocker.write_bytes(b"not a directory")
    result = run(index_command, ["--bundle", fake_bundle, "--images", images, "-o", blocker / "g.npy", "--quiet"])
    assert_user_error(result, "m.pt")
    result = run(rank_command, ["--gallery", gallery, "--bundle", fake_bundle, "--query", "red",
                                "--show", blocker / "x.png"])
    assert_user_error(result, "m.pt")
    assert blocker.read_bytes() == b"not a directory"


def test_export_checks_its_output_before_reading_the_checkpoint(tmp_path):
    blocker = tmp_path / "m.pt"
    blocker.write_bytes(b"not a directory")
    result = tbps(["export", "--ckpt", tmp_path / "absent.pt", "-o", blocker / "x.bundle"])
    assert_user_error(result, "cannot write the bundle", "m.pt is a file")
    assert blocker.read_bytes() == b"not a directory"


def test_check_writable_names_what_stops_the_output(tmp_path):
    from tbps_runtime.errors import OutputError
    from tbps_runtime.outputs import check_writable

    (tmp_path / "m.pt").write_bytes(b"x")
    for output, fragment in ((tmp_path / "m.pt" / "x.bundle", "is a file"), (tmp_path, "is a directory")):
        with pytest.raises(OutputError, match=fragment):
            check_writable(output)
    check_writable(tmp_path / "new" / "deeper" / "m.pt")
    assert not (tmp_path / "new").exists()


_CAPS = "-dac_override,-dac_read_search,-fowner"
_NO_ROOT_POWERS = ["setpriv", f"--bounding-set={_CAPS}", f"--inh-caps={_CAPS}"]


def _unprivileged(args: list) -> SimpleNamespace:
    """``tbps ARGS`` without root's power to read and write anything (permissions apply again)."""
    code = "from tbps_runtime.cli import main; main(prog_name='tbps')"
    process = subprocess.run([*_NO_ROOT_POWERS, sys.executable, "-c", code, *map(str, args)], cwd=ROOT,
                             capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    return as_result(process)


@pytest.fixture()
def unprivileged(tmp_path):
    """A scratch directory, when dropping root's powers works here (else skip, with the reason)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed: cannot run a command without root's powers")
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o555)
    done = subprocess.run([*_NO_ROOT_POWERS, "touch", str(probe / "x")], capture_output=True, text=True)
    if done.returncode == 0:
        pytest.skip("permissions do not stop this process even without dac_override (not root?)")
    if "Permission denied" not in done.stderr:
        pytest.skip(f"cannot drop root's powers here: {done.stderr.strip()}")
    area = tmp_path / "area"
    area.mkdir()
    yield area
    for p in [tmp_path, *tmp_path.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, 0o755)


def _public_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target) if source.is_dir() else shutil.copy(source, target)
    return target


def test_unwritable_and_unreadable_files_are_one_error(unprivileged, fake_bundle, images, gallery):
    bundle = _public_copy(fake_bundle, unprivileged / "m.bundle")
    crops = _public_copy(images, unprivileged / "crops")
    shut = unprivileged / "shut"
    shut.mkdir()
    os.chmod(shut, 0o555)
    result = _unprivileged(["index", "--bundle", bundle, "--images", crops, "-o", shut / "g.npy", "--quiet"])
    assert_user_error(result, str(shut))
    assert listing(shut) == []

    folder = unprivileged / "g"
    folder.mkdir()
    copy = _public_copy(gallery, folder / "g.npy")
    _public_copy(gallery.with_suffix(".json"), folder / "g.json")
    result = _unprivileged(["rank", "--gallery", copy, "--bundle", bundle, "--query", "red",
                            "--html", shut / "r.html"])
    assert_user_error(result, str(shut))
    os.chmod(folder / "g.json", 0o000)
    assert_user_error(_unprivileged(["rank", "--gallery", copy, "--bundle", bundle, "--query", "red"]), "g.json")
    os.chmod(folder / "g.json", 0o666)
    os.chmod(bundle / TEXT_TOWER.onnx_file, 0o000)
    assert_user_error(_unprivileged(["rank", "--gallery", copy, "--bundle", bundle, "--query", "red"]),
                      TEXT_TOWER.onnx_file)


def test_export_refuses_an_unwritable_directory_before_exporting(unprivileged):
    shut = unprivileged / "shut"
    shut.mkdir()
    os.chmod(shut, 0o555)
    result = _unprivileged(["export", "--ckpt", unprivileged / "absent.pt", "-o", shut / "x.bundle"])
    assert_user_error(result, "cannot write the bundle", str(shut))
    assert listing(shut) == []


def test_train_refuses_an_unwritable_output_before_training(unprivileged, synth_root):
    shut = unprivileged / "shut"
    shut.mkdir()
    os.chmod(shut, 0o555)
    result = _unprivileged(["train", "--dataset", "cuhk-pedes", "--root", synth_root, "--preset", "tiny",
                            "-o", shut / "m.pt", "--quiet"])
    assert_user_error(result, "cannot write the checkpoint", str(shut))
    assert listing(shut) == []


@pytest.mark.parametrize("device, fragment", [("tpu:7", "not a device PyTorch knows"), ("cuda", "--device cuda"),
                                              ("cuda:99", "--device cuda:99"), ("meta", "cpu, cuda")])
def test_devices_this_machine_cannot_use_are_one_error(device, fragment):
    """The library names the device; the command line's line for the same error, the option."""
    import torch

    from tbps_runtime.climessages import in_flags
    from tbps_runtime.errors import ConfigError
    from tbps_train.distributed import check_device

    if device.startswith("cuda") and torch.cuda.is_available() and device == "cuda":
        pytest.skip("this machine has CUDA: --device cuda is valid here")
    with pytest.raises(ConfigError, match=fragment.removeprefix("--").replace("(", r"\(")) as refused:
        check_device(device)
    assert "--" not in str(refused.value) and fragment in in_flags(refused.value)
    check_device("cpu")


@pytest.mark.parametrize("command", ["train", "eval"])
def test_train_and_eval_refuse_an_unknown_device_in_one_line(command, tmp_path):
    args = (["train", "--dataset", "cuhk-pedes", "--root", tmp_path, "--preset", "tiny", "-o", tmp_path / "m.pt"]
            if command == "train" else ["eval", "--ckpt", tmp_path / "m.pt", "--dataset", "cuhk-pedes",
                                         "--root", tmp_path])
    assert_user_error(tbps([*args, "--device", "tpu:7"]), "tpu:7")
    assert listing(tmp_path) == []


# ---- 5. crafted metadata --------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("config", "a string"), ("config", {"model": 3}),
                                          ("num_identities", "ten"), ("state_dict", [1, 2])])
def test_a_crafted_checkpoint_is_one_error(field, value, tmp_path):
    import torch

    from tbps_train.checkpoint import FORMAT, VERSION

    payload = {"format": FORMAT, "version": VERSION, "config": {}, "text_backbone_config": {},
               "tokenizer_json": "{}", "state_dict": {}, "num_identities": 1, field: value}
    torch.save(payload, tmp_path / "m.pt")
    result = tbps(["eval", "--ckpt", tmp_path / "m.pt", "--dataset", "cuhk-pedes", "--root", tmp_path])
    assert_user_error(result, "m.pt" if field != "config" or isinstance(value, str) else "config")


@pytest.mark.parametrize("changes, fragment", [
    ({"bundle": 12345}, "bundle"),
    ({"bundle": ["a"]}, "bundle"),
    ({"unreadable": "all"}, "unreadable"),
    ({"shard": {"index": 0, "count": 10 ** 20, "total": 6, "start": 0, "list_hash": "x"}}, "shard record"),
    ({"shard": {"index": 5, "count": 2, "total": 6, "start": 0, "list_hash": "x"}}, "shard record"),
    ({"faiss": {"file": 3, "spec": "Flat"}}, "faiss record"),
])
def test_a_crafted_gallery_description_is_one_error(changes, fragment, fake_bundle, gallery, tmp_path):
    edited = edit_sidecar(gallery, tmp_path, **changes)
    args = ["--gallery", edited, "--query", "red"] + ([] if "bundle" in changes else ["--bundle", fake_bundle])
    assert_user_error(run(rank_command, args), fragment)


def test_a_shard_count_beyond_reason_is_one_error(fake_bundle, images, tmp_path):
    result = run(index_command, ["--bundle", fake_bundle, "--images", images, "-o", tmp_path / "shards/",
                                 "--shard", "0/99999999999999999999", "--quiet"])
    assert_user_error(result, "at most")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("identity", ["\u00b2", "\u0663", "7\u00b2", "-"])
def test_list_identities_that_are_not_ascii_integers_stay_text(identity, fake_bundle, images, tmp_path):
    from tbps_runtime.model.images import collect_images

    listed = tmp_path / "list.txt"
    first = sorted(images.iterdir())[0]
    listed.write_text(f"{first}\t{identity}\n{first}\t12\n", encoding="utf-8")
    _, identities = collect_images(listed)
    assert identities == [identity, 12]
    index(fake_bundle, listed, tmp_path / "g.npy")


@pytest.mark.parametrize("state", [
    {"done": "all", "failures": {}},
    {"done": 10 ** 9, "failures": {}},
    {"done": -3, "failures": {}},
    {"done": 1, "failures": []},
    {"done": 1, "failures": {"x": "bad"}},
    {"done": 1, "failures": {"5": "after done"}},
    {"done": 1, "failures": {"0": 42}},
], ids=lambda s: json.dumps(s))
def test_a_tampered_partial_index_is_started_over(state, fake_bundle, images, tmp_path, monkeypatch):
    from tbps_runtime.gallery import npy
    from tbps_runtime.model.images import collect_images
    from tbps_runtime.search import PersonSearch

    output = tmp_path / "g.npy"
    paths = [os.path.abspath(p) for p in collect_images(images)[0]]
    search = PersonSearch.from_bundle(fake_bundle)
    partial = npy.PartialIndex(output, paths, search.fingerprint, search.encoder.slot_shape)
    partial.rows[:] = np.nan  # rows a tampered state would claim
    partial.rows.flush()
    partial.state_path.write_text(json.dumps({"key": partial.key, **state}))
    del partial
    for _ in range(2):  # and every rerun
        index(fake_bundle, images, output)
    rows = np.load(output)
    assert np.isfinite(rows).all() and len(rows) == len(paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.json", "g.npy"]


def test_non_utf8_output_names_are_escaped_in_errors_and_logs(fake_bundle, gallery, tmp_path):
    env = {"PYTHONIOENCODING": "utf-8"}
    html = os.fsdecode(bytes(tmp_path) + b"/r\xe9sultats.html")
    result = tbps(["rank", "--gallery", gallery, "--bundle", fake_bundle, "--query", "red", "--html", html], env=env)
    assert result.exit_code == 0 and "Logging error" not in result.stderr, result.output
    assert "r\\xe9sultats.html" in result.stderr
    missing = os.fsdecode(bytes(tmp_path) + b"/caf\xe9.npy")
    assert_user_error(tbps(["rank", "--gallery", missing, "--query", "red"], env=env), "caf\\xe9.npy")


@settings(max_examples=300, deadline=None)
@given(name=st.text(alphabet=st.sampled_from(["a", ".", "/", "\\", ":", "\x00", " ", "C"]), max_size=12))
def test_resolve_inside_never_leads_outside(name):
    root = Path("/srv/root")
    try:
        path = resolve_inside(root, name, "x")
    except UnsafePathError:
        return
    assert os.path.normpath(path).startswith(str(root) + os.sep) or os.path.normpath(path) == str(root)
