"""Every command the documentation shows (README.md, docs/**/*.md) is checked against the real command line,
and the ones a test can afford run on the session fixtures.

- Parsed, never run (``test_documented_command_parses``): every ``tbps ...`` command, ``tbps-NAME`` alias
  and ``python -m benchmarks.*``/``tbps_*`` of a fenced block goes through click's (or argparse's) own
  parsing, so an unknown subcommand or option, a bad choice or a wrong number of arguments fails with the
  doc file and line. Extraction and parsing: tests/doc_commands.py.
- Run (the ``test_run_*`` tests, declared with ``@runs``): in a folder laid out as the quickstart leaves
  it (``workdir``: the session's exported bundle, synthetic dataset and crops), each command as the docs
  print it, an argument replaced only where ``SMALL_FOOTAGE``, ``ROW`` or the test says; the README's
  Python example too. Each checks its exit status and what it printed or wrote.
- ``NOT_RUN``: the commands that are parsed only, each with the reason. Every command is run or listed
  there (``test_every_command_runs_or_says_why``).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from doc_commands import ROOT, DocCommand, all_commands, checked, extract, parse

COMMANDS = [c for c in all_commands() if checked(c)]

# (doc file, command prefix) -> why the command is parsed but not run here.
NOT_RUN = {
    # The whole chain, or training: minutes to hours on 2 cores (tests/test_visualize.py runs the quickstart on
    # a tiny preset; tests/test_train.py trains).
    ("README.md", "tbps quickstart"): "trains the demo model: minutes",
    ("docs/index.md", "tbps quickstart"): "trains the demo model: minutes",
    ("docs/install.md", "tbps quickstart"): "trains the demo model: minutes",
    ("docs/quickstart.md", "tbps quickstart"): "trains the demo model: minutes",
    ("README.md", "tbps train"): "a real dataset (/data/CUHK-PEDES) and a GPU (--device cuda)",
    ("README.md", "tbps eval"): "a real dataset (/data/CUHK-PEDES)",
    ("docs/guides/datasets.md", "tbps train"): "trains on your own annotations.csv",
    ("docs/guides/datasets.md", "tbps eval"): "your own annotations.csv and checkpoint",
    ("docs/guides/edge.md", "tbps train"): "trains the demo model: minutes",
    ("docs/guides/synth-parts.md", "tbps train"): "trains on 3000 identities: hours",
    ("docs/guides/train.md", "tbps train"): "a real dataset, a GPU, or minutes of training",
    ("docs/guides/train.md", "tbps eval"): "a real dataset (/data/CUHK-PEDES)",
    ("docs/guides/train.md", "tbps ablate"): "trains the ablation rows: hours",
    ("docs/results.md", "tbps ablate"): "trains the ablation rows: hours",
    ("docs/guides/synth-parts.md", "tbps synth --parts"): "writes 2,400 to 12,000 images: minutes",
    # Exporting: about a minute of PyTorch on 2 cores (the session fixture exported_bundle runs export_bundle;
    # tests/test_export.py the command), TensorRT on a GPU.
    ("README.md", "tbps export"): "exports with PyTorch: about a minute",
    ("docs/guides/export.md", "tbps export"): "exports with PyTorch: about a minute; --trt needs a GPU",
    ("docs/guides/deploy.md", "tbps export"): "exports with PyTorch: about a minute",
    ("docs/benchmarks/index.md", "tbps export"): "exports and quantizes with PyTorch: minutes",
    ("docs/guides/export.md", "tbps trt-selfcheck"): "TensorRT on a GPU",
    ("docs/benchmarks/index.md", "python -m benchmarks."): "a benchmark: minutes of timing on an idle machine",
    # Real datasets and annotation files.
    ("docs/guides/datasets.md", "tbps data check"): "a real dataset root or your own annotations.csv",
    ("docs/guides/datasets.md", "tbps data convert"): "the original CUHK-PEDES / RaSa annotation files",
    # Servers, clusters and network streams.
    ("README.md", "tbps ingest cam3.mp4 rtsp://"): "a network stream (rtsp://10.0.0.7/live)",
    ("README.md", "tbps serve"): "starts a server (tests/test_serve.py serves the same app in-process)",
    ("docs/guides/serve.md", "tbps serve"): "starts a server (tests/test_serve.py)",
    ("docs/guides/serve.md", "tbps gallery audit"): "reads the audit log tbps serve writes (tests/test_serve.py)",
    ("docs/guides/footage.md", "tbps gallery audit"): "reads the audit log tbps serve writes (tests/test_serve.py)",
    ("docs/guides/footage.md", "tbps ingest --cameras"): "a camera file of network streams; --follow never ends",
    ("docs/guides/footage.md", "tbps ingest SOURCE..."): "a usage synopsis: placeholders, not files",
    ("docs/guides/footage.md", "tbps ingest 'cam*.mp4'"): "a Milvus server, or milvus-lite (test_milvus_store.py)",
    ("docs/guides/scale.md", "tbps index --bundle /shared/"): "a Slurm array task on a shared file system",
    ("docs/guides/scale.md", "tbps index --bundle m.bundle --images crops.txt -o g.npy --ray"):
        "starts or joins a Ray cluster (tests/test_runtime_ray.py)",
    ("docs/guides/scale.md", "tbps index --bundle m.bundle --images crops/ -o g.npy --faiss"):
        "IVF1024,PQ64 trains on tens of thousands of rows (tests/test_runtime_faiss_cli.py: small indexes)",
    ("docs/guides/scale.md", "tbps rank --gallery g.npy --query ... --nprobe"): "needs that g.faiss",
    ("docs/guides/scale.md", "tbps rank --gallery g.npy --query ... --rescore"): "needs that g.faiss",
    ("docs/guides/serve.md", "tbps ingest"): "docs/guides/footage.md's ingest loop (run) with the benchmarks' bundle",
}

RUN: set[tuple[str, str]] = set()  # filled by @runs: the commands the tests below run
# What the runs change, and why: the guide's 20 s of 640x360 footage take 5 s to write and 5 s to ingest,
# 2 s of 320x180 a fifth of that; the guide's store has 56 rows (row 37), the test's 16.
SMALL_FOOTAGE = {"20": "2"}, ("--size", "320", "180")
ROW = {"37": "3"}


def runs(*keys: tuple[str, str]):
    """Declares the documented commands a test runs (doc file, command prefix): every command of the file
    that starts so, which the test then fetches with :func:`doc`."""
    RUN.update(keys)
    return lambda test: test


def doc(file: str, prefix: str) -> DocCommand:
    """The command of ``file`` that is, or else starts with, ``prefix`` (the same text wherever it repeats)."""
    assert any(file == f and prefix.startswith(p) for f, p in RUN), f"declare ({file!r}, {prefix!r}) with @runs"
    found = [c for c in COMMANDS if c.file == file and c.text.startswith(prefix)]
    found = [c for c in found if c.text == prefix] or found  # a whole command: not the longer ones it begins
    assert found, f"{file} no longer shows a command starting with {prefix!r}"
    assert len({c.argv for c in found}) == 1, f"{file}: several commands start with {prefix!r}: {found}"
    return found[0]


def tbps(command: DocCommand, replace: dict[str, str] | None = None, extra: tuple[str, ...] = ()):
    """Run ``command`` in this process (``replace``: argument -> the one to run instead); assert exit 0."""
    from tbps_runtime.cli import main

    argv = [(replace or {}).get(a, a) for a in command.argv] + list(extra)
    assert argv[0] == "tbps", command
    result = CliRunner().invoke(main, argv[1:], catch_exceptions=False)
    assert result.exit_code == 0, f"{command.where}: {shlex.join(argv)} exited {result.exit_code}:\n{result.output}"
    return result


def python_c(command: DocCommand) -> str:
    """Run ``python -c CODE`` in this process; its standard output."""
    assert command.argv[:2] == ("python", "-c"), command
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(command.argv[2], command.where, "exec"), {"__name__": "__main__"})
    return out.getvalue()


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def ranked(stdout: str) -> list[list[str]]:
    """The result lines of ``tbps rank``: rank, score, ... (one list of words per line)."""
    return [line.split() for line in lines(stdout) if re.match(r"\s*\d+\s+-?\d+\.\d+\s", line)]


# ---- extraction and parsing ----------------------------------------------------------------------------

def test_extraction_of_one_hand_written_page():
    page = "\n".join([
        "Text with `tbps rank --nothing` inline.",
        "```bash",
        "pip install 'tbps[footage]' && tbps index --bundle m.bundle \\",
        "    --images crops/ -o g.npy   # a comment",
        "OMP_NUM_THREADS=1 tbps rank --gallery g.npy --query \"a # in quotes\"; tbps gallery info store &",
        "tbps rank --queries - < q.txt | head -3",
        "torchrun --nproc_per_node 2 --no-python tbps train ... -o m.pt",
        "tbps ingest SOURCE... --gallery DIR [--fps 5] [--detector hog|PATH.onnx | --detections FILE]",
        "```",
        "```",
        "   1    6.0019  /data/crops/00601_03.png",
        "```",
        "```",
        "$ tbps gallery info store",
        "store      store",
        "```",
        "```python",
        "tbps = 1",
        "```",
    ])
    assert [(c.line, c.text) for c in extract(page, "page.md")] == [
        (3, "pip install 'tbps[footage]'"),
        (3, "tbps index --bundle m.bundle --images crops/ -o g.npy"),
        (5, "tbps rank --gallery g.npy --query 'a # in quotes'"),
        (5, "tbps gallery info store"),
        (6, "tbps rank --queries -"),
        (6, "head -3"),
        (7, "tbps train ... -o m.pt"),
        (8, "tbps ingest SOURCE... --gallery DIR --fps 5 --detector hog"),
        (14, "tbps gallery info store"),
    ]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.where}")
def test_documented_command_parses(command, capsys):
    try:
        parse(command.argv)
    except click.ClickException as e:
        pytest.fail(f"{command}\n  {type(e).__name__}: {e.format_message()}", pytrace=False)
    except SystemExit as e:  # argparse
        pytest.fail(f"{command}\n  exit {e.code}: {capsys.readouterr().err.strip()}", pytrace=False)


@pytest.mark.parametrize("text, fragment", [
    ("tbps rnak --gallery g.npy", "No such command"),
    ("tbps rank --gallery g.npy --querry red", "No such option"),
    ("tbps rank --gallery g.npy --backend cuda", "is not one of"),
    ("tbps gallery prune store old --older-than 30d", "unexpected extra argument"),
    ("tbps-rnak --gallery g.npy", "no such script"),
])
def test_parse_refuses_what_the_command_line_refuses(text, fragment):
    with pytest.raises(click.ClickException) as refused:
        parse(tuple(shlex.split(text)))
    assert fragment in refused.value.format_message()


def test_parse_accepts_aliases_placeholders_and_elisions():
    for text in ("tbps-rank --gallery g.npy --query red -k 5",  # an alias of pyproject.toml's [project.scripts]
                 "tbps calibrate --bundle m.bundle --dataset cuhk-pedes --root DATA",  # no such path: fine
                 "tbps data check ... --json"):  # `...`: the required options left out
        parse(tuple(shlex.split(text)))

def test_every_command_runs_or_says_why():
    keys = RUN | set(NOT_RUN)
    both = RUN & set(NOT_RUN)
    assert not both, f"both run and listed as not run: {both}"
    unaccounted = [str(c) for c in COMMANDS if not any(c.file == f and c.text.startswith(p) for f, p in keys)]
    assert not unaccounted, "documented commands neither run by a test here nor in NOT_RUN:\n" + "\n".join(unaccounted)
    stale = [k for k in keys if not any(c.file == k[0] and c.text.startswith(k[1]) for c in COMMANDS)]
    assert not stale, f"entries that match no documented command: {stale}"


# ---- the folder the commands run in ---------------------------------------------------------------------

@pytest.fixture()
def workdir(tmp_path, monkeypatch, exported_bundle, synth_root):
    """A folder laid out as the quickstart leaves its work directory, as the current directory:
    ``m.bundle`` (a copy of the exported bundle: calibrating writes into it), ``tbps-quickstart/``
    (``m.bundle``, ``data`` = synth_root, ``g.npy``), ``crops/`` (8 of its crops), ``crops.txt`` (their
    list), ``queries.txt`` and ``strangers.txt`` (two captions each)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    shutil.copytree(exported_bundle, "m.bundle")
    os.makedirs("tbps-quickstart")
    os.symlink(work / "m.bundle", "tbps-quickstart/m.bundle")
    os.symlink(synth_root, "tbps-quickstart/data")
    os.makedirs("crops")
    for image in sorted((Path(synth_root) / "imgs" / "SYNTH").glob("*.png"))[:8]:
        shutil.copy(image, "crops")
    Path("crops.txt").write_text("".join(f"crops/{p.name}\n" for p in sorted(Path("crops").iterdir())))
    Path("queries.txt").write_text("a woman in a red coat and black boots\na man with a black backpack\n")
    Path("strangers.txt").write_text("a man in a yellow shirt and green trousers\na child in a blue coat\n")
    return work


# ---- search: README.md, docs/guides/search.md, docs/guides/scale.md ---------------------------------------

@runs(("README.md", "tbps index"), ("README.md", "tbps rank --gallery g.npy"),
      ("docs/guides/search.md", "tbps index"), ("docs/guides/search.md", "tbps rank"),
      ("docs/guides/search.md", "tbps calibrate"),
      ("docs/guides/scale.md", "tbps rank --gallery g.npy --query 'a man"),
      ("docs/guides/scale.md", "tbps rank --gallery g.npy --query ... --exact"))
def test_run_index_then_rank(workdir):
    index = doc("README.md", "tbps index")
    assert doc("docs/guides/search.md", "tbps index").argv == index.argv
    tbps(index)
    recorded = json.loads(Path("g.json").read_text())
    assert recorded["count"] == 8 and recorded["bundle"] == "m.bundle"  # inside the folder: relative
    assert all(e["path"].startswith("crops/") for e in recorded["entries"])

    shown = tbps(doc("README.md", "tbps rank --gallery g.npy"))
    assert len(ranked(shown.stdout)) == 5 and Path("me.png").read_bytes()[:4] == b"\x89PNG"
    text = tbps(doc("docs/guides/search.md", "tbps rank --gallery g.npy --query 'a woman in a red coat and black "
                                             "boots' -k 5 --show"))
    assert len(ranked(text.stdout)) == 5 and Path("results.png").is_file()
    assert len(ranked(tbps(doc("docs/guides/search.md", "tbps rank --gallery g.npy --query 'a woman in a red "
                                                        "coat and black boots' -k 5")).stdout)) == 5
    hits = json.loads(tbps(doc("docs/guides/search.md", "tbps rank --gallery g.npy --query 'red coat'")).stdout)
    assert [h["rank"] for h in hits] == [1, 2] and {"score", "path"} <= set(hits[0])
    per_query = json.loads(tbps(doc("docs/guides/search.md", "tbps rank --gallery g.npy --queries queries.txt -k 2")
                                ).stdout)
    assert [len(q) for q in per_query] == [2, 2]
    tbps(doc("docs/guides/search.md", "tbps rank --gallery g.npy --queries queries.txt -k 8 --html"))
    assert "<html" in Path("results.html").read_text().lower()
    Path("results.html").unlink()
    tbps(doc("docs/guides/search.md", "tbps rank --gallery g.npy --query ... --show"))
    assert Path("results.html").is_file() and Path("results.png").is_file()
    assert len(ranked(tbps(doc("docs/guides/scale.md", "tbps rank --gallery g.npy --query 'a man")).stdout)) == 8
    assert len(ranked(tbps(doc("docs/guides/scale.md", "tbps rank --gallery g.npy --query ... --exact")).stdout)) == 8

    calibrate = doc("docs/guides/search.md", "tbps calibrate")
    tbps(calibrate, {"DATA": "tbps-quickstart/data"})
    threshold = json.loads(Path("m.bundle/manifest.json").read_text())["score_threshold"]
    auto = tbps(doc("docs/guides/search.md", "tbps rank --gallery g.npy --query ... --min-score auto"))
    assert "bundle threshold" in auto.stderr or ranked(auto.stdout), auto.output
    assert all(float(hit[1]) >= threshold["value"] for hit in ranked(auto.stdout))
    by_hand = tbps(doc("docs/guides/search.md", "tbps rank --gallery g.npy --query ... --min-score 3.5"))
    assert all(float(hit[1]) >= 3.5 for hit in ranked(by_hand.stdout))


def test_run_readme_python_example(workdir):
    """The README's Python, as printed, in the quickstart's folder layout."""
    from tbps_runtime import PersonSearch

    PersonSearch.from_bundle("m.bundle").index(sorted(Path("crops").iterdir()), "tbps-quickstart/g.npy")
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    code = re.search(r"## From Python\n+```python\n(.*?)```", text, flags=re.S)[1]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "__main__"})
    printed = lines(out.getvalue())
    assert len(printed) == 6, printed  # 5 matches, then the best of mine.npy
    assert all(re.fullmatch(r"[1-5] -?\d+\.\d+ \S+", line) for line in printed[:5]), printed
    assert printed[5].endswith(("00001_00.png", "00002_00.png")) and Path("mine.json").is_file()


@runs(("docs/guides/scale.md", "tbps index --bundle m.bundle --images crops.txt -o gallery/ --shard"),
      ("docs/guides/scale.md", "tbps rank --gallery gallery/"))
def test_run_sharded_index_then_move_the_folder(workdir, tmp_path):
    shard = doc("docs/guides/scale.md", "tbps index --bundle m.bundle --images crops.txt -o gallery/ --shard")
    for i in range(4):  # --shard 0/4 ... 3/4: the directory ranks once complete
        tbps(shard, {"0/4": f"{i}/4"})
    rank = doc("docs/guides/scale.md", "tbps rank --gallery gallery/")
    before = ranked(tbps(rank).stdout)
    assert len(before) == 5
    os.chdir(tmp_path)
    moved = tmp_path / "moved"
    workdir.rename(moved)  # gallery/, crops/ and m.bundle/ together: recorded relative, they move whole
    os.chdir(moved)
    after = ranked(tbps(rank).stdout)
    assert [h[:2] for h in after] == [h[:2] for h in before]
    assert all(h[2].startswith(str(moved)) for h in after), after


# ---- camera footage: docs/guides/footage.md, README.md -----------------------------------------------------

@runs(("docs/guides/footage.md", "tbps synth-footage"), ("docs/guides/serve.md", "tbps synth-footage"),
      ("docs/guides/footage.md", "tbps ingest 'foot/$c.mp4'"),
      ("docs/guides/footage.md", "tbps gallery info"), ("docs/guides/footage.md", "tbps rank"),
      ("docs/guides/footage.md", "tbps calibrate"), ("docs/guides/footage.md", "tbps gallery prune"),
      ("docs/guides/footage.md", "tbps gallery delete"), ("docs/guides/footage.md", "tbps gallery reindex"),
      ("README.md", "tbps rank --gallery store"), ("README.md", "tbps gallery prune"))
def test_run_footage_guide(workdir, fake_bundle):
    synth = doc("docs/guides/footage.md", "tbps synth-footage")
    assert doc("docs/guides/serve.md", "tbps synth-footage").argv == synth.argv
    tbps(synth, *SMALL_FOOTAGE)
    ingest = doc("docs/guides/footage.md", "tbps ingest 'foot/$c.mp4'")
    for camera in ("cam1", "cam2", "cam3"):  # the guide's `for c in cam1 cam2 cam3`
        tbps(ingest, {a: a.replace("$c", camera) for a in ingest.argv})
    info = tbps(doc("docs/guides/footage.md", "tbps gallery info")).stdout
    rows = int(re.search(r"rows\s+(\d+)", info)[1])
    assert {"cam1", "cam2", "cam3"} <= set(re.findall(r"camera\s+(cam\d):", info)) and rows > int(ROW["37"])

    def rank(prefix: str, file: str = "docs/guides/footage.md"):
        return tbps(doc(file, prefix), ROW)

    hits = ranked(rank("tbps rank --gallery store --per-track -k 4 --show hits.png").stdout)
    assert len(hits) == 4 and len({h[5] for h in hits}) == 4 and Path("hits.png").is_file()  # four tracks
    window = ranked(rank("tbps rank --gallery store --query 'a man in a green cap").stdout)
    assert len(window) == 5 and {h[2] for h in window} == {"cam3"}
    assert {h[2] for h in ranked(rank("tbps rank --gallery store --query ... --camera cam3").stdout)} == {"cam3"}
    readme = ranked(rank("tbps rank --gallery store", "README.md").stdout)
    assert readme and {h[2] for h in readme} == {"cam3"} and Path("hits.html").is_file()
    per_query = json.loads(rank("tbps rank --gallery store --queries queries.txt").stdout)
    assert len(per_query) == 2 and all(len({h["track"] for h in q}) == len(q) for q in per_query)

    like = ranked(rank("tbps rank --gallery store --like-row 37 --per-track").stdout)
    slots = json.loads(Path("m.bundle/manifest.json").read_text())["num_slots"]
    assert float(like[0][1]) == pytest.approx(slots, abs=1e-3)  # the row itself scores K
    mixed = json.loads(rank("tbps rank --gallery store --like-row 37 --query 'orange bag'").stdout)
    assert mixed and {h["camera"] for h in mixed} == {"cam1"}

    assert "store threshold" in tbps(doc("docs/guides/footage.md", "tbps calibrate --gallery store")).stdout
    assert "strangers.txt" in tbps(doc("docs/guides/footage.md", "tbps calibrate --gallery store --captions")).stdout
    auto = rank("tbps rank --gallery store --query ... --min-score auto")
    assert "store's calibrated threshold" in auto.stderr, auto.stderr

    old = time.time() > 1_772_460_000 + 30 * 86_400  # the footage starts at 2026-03-02T14:00Z
    for prune in (doc("docs/guides/footage.md", "tbps gallery prune"), doc("README.md", "tbps gallery prune")):
        said = tbps(prune).stdout
        assert not old or f"would remove {rows} row(s)" in said, said  # a dry run: every row, none removed
    said = tbps(doc("docs/guides/footage.md", "tbps gallery delete store --camera cam2 --dry-run")).stdout
    assert re.fullmatch(r"would remove \d+ row\(s\) \(cam2 \d+\)\n", said), said
    assert tbps(doc("docs/guides/footage.md", "tbps gallery info")).stdout == info

    tbps(doc("docs/guides/footage.md", "tbps gallery reindex"), {"newer.bundle": str(fake_bundle)})
    assert re.search(rf"rows\s+{rows} ", tbps(doc("docs/guides/footage.md", "tbps gallery info"),
                                                {"store": "store2"}).stdout)
    deleted = tbps(doc("docs/guides/footage.md", "tbps gallery delete store --source")).stdout
    left = int(re.search(r"rows\s+(\d+)", tbps(doc("docs/guides/footage.md", "tbps gallery info")).stdout)[1])
    assert "cam1" in deleted and 0 < left < rows


# ---- one-liners: docs/guides/edge.md, docs/benchmarks/index.md, docs/guides/deploy.md -------------------

@runs(("docs/guides/edge.md", "python -c"))
def test_run_edge_manifest_one_liner(workdir):
    """Every tower, the explain graphs' included (they have no fusions record)."""
    fusions = ast.literal_eval(python_c(doc("docs/guides/edge.md", "python -c")))
    assert set(fusions) == {"image_tower", "text_tower"}
    assert all({"offline", "at_load"} <= set(entry) for entry in fusions.values())


@runs(("docs/benchmarks/index.md", "python -c"))
def test_run_benchmarks_crop_list(workdir):
    from tbps_train.data.readers import read_split

    listed = lines(python_c(doc("docs/benchmarks/index.md", "python -c")))
    assert listed == [str(r.image_path) for r in read_split("cuhk-pedes", "tbps-quickstart/data", "train")]
    assert listed and all(Path(p).is_file() for p in listed)


@runs(("docs/guides/deploy.md", "python -c"), ("docs/guides/deploy.md", "tbps triton"))
def test_run_deploy_commands(workdir):
    assert len(python_c(doc("docs/guides/deploy.md", "python -c")).strip()) >= 32  # the API key
    tbps(doc("docs/guides/deploy.md", "tbps triton"))
    for tower in ("tbps_image_tower", "tbps_text_tower"):
        assert (Path("triton-models") / tower / "1" / "model.onnx").is_file()
        assert 'platform: "onnxruntime_onnx"' in (Path("triton-models") / tower / "config.pbtxt").read_text()
    assert json.loads(Path("triton-models/tbps.json").read_text())

