"""tbps-index and tbps-rank on the hand-made bundle: outputs, --json, resume, and every bad input
(one `error:` line on stderr, status 2, nothing half-written)."""

import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from runtime_fakes import COLOURS, MAX_LENGTH, make_fake_bundle, solid_image, write_bad

from tbps_runtime.atomic import sha256_file
from tbps_runtime.cli.search import index_command, rank_command
from tbps_runtime.contract import IMAGE_TOWER, TEXT_TOWER
from tbps_runtime.gallery.npy import sidecar_path
from tbps_runtime.gallery.open import load_gallery
from tbps_runtime.model.bundle import load_manifest, write_manifest
from tbps_runtime.model.images import collect_images
from cli_assertions import assert_user_error, run


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gallery")
    for i, colour in enumerate(COLOURS):
        solid_image(folder / f"{i}_{colour}.png", colour)
    (folder / "sub").mkdir()
    solid_image(folder / "sub" / "9_red.JPG", "red", fmt="JPEG")
    (folder / "notes.txt").write_text("not an image, and not picked up: no image extension")
    return folder


@pytest.fixture(scope="module")
def gallery(fake_bundle, images, tmp_path_factory):
    output = tmp_path_factory.mktemp("out") / "g.npy"
    result = run(index_command, ["--bundle", fake_bundle, "--images", images, "-o", output, "--batch-size", 3])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(output)
    assert "indexed 7 image(s)" in result.stderr
    return output


def test_index_walks_a_directory(gallery, images):
    loaded = load_gallery(gallery)
    assert [e.path for e in loaded.entries] == [str(p) for p in sorted(images.rglob("*")) if p.suffix != ".txt"
                                                and p.is_file()]
    assert loaded.embeddings.shape == (7, 3, 4) and loaded.unreadable == []


def test_rank_text_output(gallery):
    result = run(rank_command, ["--gallery", gallery, "--query", "a person in a red coat", "-k", 3])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    rank, score, path = lines[0].split()
    assert rank == "1" and float(score) == pytest.approx(3.0, abs=1e-3) and path.endswith("_red.png")
    assert lines[1].split()[2].endswith("9_red.JPG")


def test_rank_json_is_one_document(gallery):
    result = run(rank_command, ["--gallery", gallery, "--query", "blue", "-k", 2, "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # exactly one JSON document, nothing else on stdout
    assert [set(d) for d in document] == [{"rank", "score", "path"}] * 2
    assert [d["rank"] for d in document] == [1, 2] and document[0]["path"].endswith("_blue.png")
    assert document[0]["score"] >= document[1]["score"]


def test_several_queries_give_a_list_per_query(gallery, tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_text("green shirt\n\n  yellow  \n", encoding="utf-8")
    result = run(rank_command, ["--gallery", gallery, "--query", "white", "--queries", queries, "-k", 100,
                                "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert len(document) == 3 and all(len(matches) == 7 for matches in document)  # k beyond the gallery: all
    assert [m[0]["path"].rsplit("_", 1)[1] for m in document] == ["white.png", "green.png", "yellow.png"]
    text = run(rank_command, ["--gallery", gallery, "--queries", queries, "-k", 1])
    assert text.stdout.splitlines()[0] == "query: green shirt" and len(text.stdout.splitlines()) == 4


@pytest.mark.parametrize("query", ["vêtement rouge — red", "🙂🙂 red 👕", "红色的外套 red", "\u200b red"])
def test_non_ascii_and_emoji_queries_work(gallery, query):
    result = run(rank_command, ["--gallery", gallery, "--query", query, "--json", "-k", 1])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["path"].endswith("red.png")


def test_a_query_far_beyond_the_max_length_warns_on_stderr(gallery):
    long_query = "red " + "person " * 5000
    result = run(rank_command, ["--gallery", gallery, "--query", long_query, "--json", "-k", 1, "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["path"].endswith("red.png")
    assert f"longer than {MAX_LENGTH} tokens were truncated" in result.stderr


def test_index_from_a_list_with_identities_and_unreadable_images(fake_bundle, images, tmp_path):
    bad = [write_bad(tmp_path, kind) for kind in ("corrupt", "empty", "truncated", "text")]
    listing = tmp_path / "list.txt"
    lines = [f"{images / '0_red.png'}\t7", "# a comment", "", f"{bad[0].name}\t3", f"{images / '2_blue.png'}\tp-2"]
    lines += [f"{p.name}" for p in bad[1:]] + ["missing.png\t1"]
    listing.write_text("\n".join(lines) + "\n")
    output = tmp_path / "g.npy"
    result = run(index_command, ["--bundle", fake_bundle, "--images", listing, "-o", output])
    assert result.exit_code == 0, result.output
    assert "5 of 7 images could not be read and were skipped" in result.stderr
    loaded = load_gallery(output)
    assert [(e.path.rsplit("/", 1)[1], e.identity) for e in loaded.entries] == [("0_red.png", 7),
                                                                               ("2_blue.png", "p-2")]
    assert [u["path"] for u in loaded.unreadable] == [str(p) for p in bad] + [str(tmp_path / "missing.png")]
    strict = run(index_command, ["--bundle", fake_bundle, "--images", listing, "-o", tmp_path / "s.npy", "--strict",
                                 "--quiet"])
    assert_user_error(strict, "corrupt.jpg", "--strict")
    assert not (tmp_path / "s.npy").exists() and not (tmp_path / "s.json").exists()


def test_collect_images_from_list_resolves_relative_paths(tmp_path):
    (tmp_path / "l.txt").write_text("a.jpg\n sub/b.png \t 12 \n")
    paths, identities = collect_images(tmp_path / "l.txt")
    assert paths == [tmp_path / "a.jpg", tmp_path / "sub/b.png"] and identities == [None, 12]


def test_interrupted_index_resumes(fake_bundle, images, tmp_path, monkeypatch):
    from tbps_runtime.model.backends import OnnxRuntimeBackend

    real_run, calls = OnnxRuntimeBackend.run, []

    def interrupted_run(self, tower, feeds):
        calls.append(tower.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(self, tower, feeds)

    output = tmp_path / "g.npy"
    args = ["--bundle", fake_bundle, "--images", images, "-o", output, "--batch-size", 2]
    monkeypatch.setattr(OnnxRuntimeBackend, "run", interrupted_run)
    result = run(index_command, args)
    assert result.exit_code == 130 and "run the same command again to resume" in result.stderr
    assert not output.exists() and not sidecar_path(output).exists()
    monkeypatch.setattr(OnnxRuntimeBackend, "run", real_run)
    resumed = run(index_command, args)
    assert resumed.exit_code == 0 and "resuming" in resumed.stderr and "2 of 7 images" in resumed.stderr
    fresh = run(index_command, args[:-3] + [tmp_path / "fresh.npy"])
    assert fresh.exit_code == 0, fresh.output
    np.testing.assert_array_equal(load_gallery(output).embeddings, load_gallery(tmp_path / "fresh.npy").embeddings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.json", "fresh.npy", "g.json", "g.npy"]


# --- bad input: one line, status 2 -------------------------------------------------------------------


@pytest.mark.parametrize("query, fragment", [("", "empty"), ("   \t ", "only whitespace")])
def test_empty_queries(gallery, query, fragment):
    assert_user_error(run(rank_command, ["--gallery", gallery, "--query", query]), fragment)


def test_no_query_and_empty_query_file(gallery, tmp_path):
    assert_user_error(run(rank_command, ["--gallery", gallery]), "give a query")
    (tmp_path / "q.txt").write_text("\n  \n")
    assert_user_error(run(rank_command, ["--gallery", gallery, "--queries", tmp_path / "q.txt"]), "no queries")
    assert_user_error(run(rank_command, ["--gallery", gallery, "--queries", tmp_path / "none.txt"]), "not found")


def damaged_gallery(gallery, tmp_path, how):
    shutil.copy(gallery, tmp_path / "g.npy")
    shutil.copy(sidecar_path(gallery), tmp_path / "g.json")
    target = tmp_path / "g.npy"
    embeddings = np.load(target)
    if how == "shape":
        np.save(target, embeddings.reshape(len(embeddings), -1))
    elif how == "dtype":
        np.save(target, embeddings.astype(np.float16))
    elif how == "nan":
        embeddings[4, 1, 2] = np.nan
        np.save(target, embeddings)
    elif how == "inf":
        embeddings[2] = np.inf
        np.save(target, embeddings)
    elif how == "no-json":
        (tmp_path / "g.json").unlink()
    elif how == "missing":
        target.unlink()
    return target


@pytest.mark.parametrize("how, fragments", [
    ("shape", ["has shape (7, 12)"]), ("dtype", ["float16", "float32"]), ("nan", ["row 4", "NaN or inf"]),
    ("inf", ["row 2", "re-index"]), ("no-json", ["no g.json beside it"]), ("missing", ["gallery not found"]),
])
def test_bad_galleries(gallery, tmp_path, how, fragments):
    target = damaged_gallery(gallery, tmp_path, how)
    assert_user_error(run(rank_command, ["--gallery", target, "--query", "red"]), *fragments)


def test_a_gallery_built_with_another_bundle(gallery, tmp_path):
    other = make_fake_bundle(tmp_path / "other", seed=1)
    assert_user_error(run(rank_command, ["--gallery", gallery, "--bundle", other, "--query", "red"]),
                      "fingerprint", "re-index")


def test_the_recorded_bundle_is_gone(fake_bundle, images, tmp_path):
    moved = shutil.copytree(fake_bundle, tmp_path / "b")
    output = tmp_path / "g.npy"
    assert run(index_command, ["--bundle", moved, "--images", images, "-o", output, "--quiet"]).exit_code == 0
    shutil.rmtree(moved)
    assert_user_error(run(rank_command, ["--gallery", output, "--query", "red"]), "pass --bundle")
    assert run(rank_command, ["--gallery", output, "--query", "red", "--bundle", fake_bundle]).exit_code == 0


@pytest.mark.parametrize("damage, fragment", [
    (lambda b: (b / TEXT_TOWER.onnx_file).write_bytes(b"tampered"), "was modified"),
    (lambda b: (b / IMAGE_TOWER.onnx_file).unlink(), "bundle file missing"),
    (lambda b: (b / "tokenizer.json").unlink(), "bundle file missing"),
])
def test_missing_or_modified_bundle_files(gallery, fake_bundle, images, tmp_path, damage, fragment):
    broken = shutil.copytree(fake_bundle, tmp_path / "b")
    damage(broken)
    assert_user_error(run(rank_command, ["--gallery", gallery, "--bundle", broken, "--query", "red"]), fragment)
    assert_user_error(run(index_command, ["--bundle", broken, "--images", images, "-o", tmp_path / "g.npy"]),
                      fragment)
    assert not (tmp_path / "g.npy").exists()


def test_index_bad_arguments(fake_bundle, images, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--images", tmp_path / "nowhere"], "no such directory or list file"),
        (["--images", empty], "no image files"),
        (["--images", images / "0_red.png"], "not an image"),
        (["--images", images, "-o", tmp_path / "g.bin"], "must end in .npy"),
        (["--bundle", tmp_path / "no-bundle"], "bundle directory not found"),
        (["--images", images, "--backend", "tensorrt"], "no TensorRT engine"),
    ]
    for extra, fragment in cases:
        args = {"--bundle": fake_bundle, "--images": images, "-o": tmp_path / "g.npy"}
        args.update(dict(zip(extra[::2], extra[1::2])))
        assert_user_error(run(index_command, [x for pair in args.items() for x in pair] + ["--quiet"]), fragment)
    assert not list(tmp_path.glob("*.npy"))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_backend_needs_tensorrt(gallery, tmp_path, fake_bundle):
    with_plans = shutil.copytree(fake_bundle, tmp_path / "b")
    manifest = load_manifest(with_plans)
    for tower in (IMAGE_TOWER, TEXT_TOWER):
        (with_plans / tower.plan_file).write_bytes(b"plan")
        manifest.files[tower.plan_file] = sha256_file(with_plans / tower.plan_file)
        manifest.tensorrt[tower.name] = {"file": tower.plan_file, "tensorrt_version": "10.7.0.23", "gpu": "X",
                                         "compute_capability": "9.0"}
    write_manifest(with_plans, manifest)
    result = run(rank_command, ["--gallery", gallery, "--bundle", with_plans, "--query", "red",
                                "--backend", "tensorrt"])
    assert_user_error(result, "needs TensorRT", "tbps[trt]")


def test_commands_never_import_torch(fake_bundle, images, tmp_path):
    """A full index + rank in a fresh interpreter loads neither torch nor the training/export packages."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from tbps_runtime.cli.search import index_command, rank_command\n"
        f"r = CliRunner().invoke(index_command, ['--bundle', {str(fake_bundle)!r}, '--images', {str(images)!r}, "
        f"'-o', {str(tmp_path / 'g.npy')!r}, '--quiet'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"r = CliRunner().invoke(rank_command, ['--gallery', {str(tmp_path / 'g.npy')!r}, '--query', 'red'])\n"
        "assert r.exit_code == 0, r.output\n"
        "bad = [m for m in ('torch', 'transformers', 'tbps_train', 'tbps_export') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
