"""The `tbps` command: one group, subcommands from entry points, aliases, one error contract."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

import tbps_runtime.cli as group
from cli_assertions import assert_user_error

SUBCOMMANDS = ["ablate", "calibrate", "data", "eval", "export", "gallery", "index", "ingest", "quickstart", "rank",
               "serve", "synth", "synth-footage", "train", "triton", "trt-selfcheck"]
ALIASES = {"tbps-synth": "synth", "tbps-train": "train", "tbps-eval": "eval", "tbps-ablate": "ablate",
           "tbps-quickstart": "quickstart", "tbps-export": "export", "tbps-index": "index", "tbps-rank": "rank",
           "tbps-ingest": "ingest", "tbps-synth-footage": "synth-footage", "tbps-serve": "serve"}


def invoke(args):
    return CliRunner().invoke(group.main, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_every_subcommand():
    result = invoke(["--help"])
    assert result.exit_code == 0, result.output
    listed = [line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == SUBCOMMANDS


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name):
    result = invoke([name, "--help"])
    assert result.exit_code == 0, result.output
    assert f"tbps {name}" in result.output and "-h, --help" in result.output


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_old_script_names_are_the_same_commands(alias):
    """`tbps-NAME` is `tbps NAME`: the same options and help."""
    script = subprocess.run([alias, "--help"], capture_output=True, text=True)
    assert script.returncode == 0, script.stderr
    sub = invoke([ALIASES[alias], "--help"])
    assert script.stdout.startswith(f"Usage: {alias} ") and sub.output.startswith(f"Usage: tbps {ALIASES[alias]} ")
    words = lambda text: "".join(text.split("\n", 1)[1].split())  # the same text, wrapped at any width
    assert words(script.stdout) == words(sub.output)


def test_version():
    result = invoke(["--version"])
    assert result.exit_code == 0 and result.output.startswith("tbps, version ")


@pytest.mark.parametrize("args, fragment", [
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
    (["rank", "--gallery", "g.npy", "--query", "x", "-k", "0"], "0 is not in the range x>=1"),
    (["rank", "--query", "x"], "Missing option '--gallery'"),
    (["index", "--bundle", "b", "--images", "i", "-o", "g.npy", "--threads", "0"], "--threads"),
    (["train", "--dataset", "cuhk-pedes", "--root", "r", "-o", "m.pt", "--epochs", "0"], "--epochs"),
    (["train", "--dataset", "cuhk-pedes", "--root", "r", "-o", "m.pt", "--batch-size", "0"], "--batch-size"),
    (["eval", "--ckpt", "m.pt", "--dataset", "nope", "--root", "r"], "'nope' is not one of"),
])
def test_usage_errors_are_one_line(args, fragment):
    assert_user_error(invoke(args), fragment)


def test_alias_usage_errors_are_one_line_too():
    result = subprocess.run(["tbps-rank", "--gallery", "g.npy", "--query", "x", "-k", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "tbps-rank --help" in lines[0]


def test_a_directory_for_queries_is_a_usage_error(tmp_path):
    assert_user_error(invoke(["rank", "--gallery", "g.npy", "--queries", tmp_path]), "--queries")


def test_edge_install_runs_only_the_runtime(monkeypatch):
    """Without the [train]/[export]/[footage] extras (no torch, no PyAV), only what the runtime can run is
    available; the rest is listed with its pip command, and running it says which extra it needs."""
    real = group._installed
    monkeypatch.setattr(group, "_installed", lambda name: name not in ("torch", "onnx", "av") and real(name))
    assert list(group.available_commands()) == ["gallery", "index", "rank", "serve"]
    assert set(group.unavailable_commands()) == set(SUBCOMMANDS) - {"gallery", "index", "rank", "serve"}
    assert_user_error(invoke(["train", "--help"]), "pip install 'tbps[train]'")


def test_help_imports_no_heavy_library():
    """`tbps --help` stays instant: listing the runtime's subcommands imports no numpy, onnxruntime or torch."""
    code = ("import sys, tbps_runtime.cli as g\n"
            "real = g._installed\n"
            "g._installed = lambda n: n not in ('torch', 'onnx') and real(n)\n"
            "try:\n    g.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('numpy', 'onnxruntime', 'torch', 'PIL', 'tokenizers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_group_quiet_silences_info_lines(tmp_path):
    loud = invoke(["synth", "-o", tmp_path / "a", "--ids", 6, "--images-per-id", 1])
    quiet = invoke(["-q", "synth", "-o", tmp_path / "b", "--ids", 6, "--images-per-id", 1])
    assert loud.exit_code == quiet.exit_code == 0
    assert quiet.stderr.strip() == ""


def test_a_missing_required_output_is_a_usage_error_not_a_traceback():
    """click 8.5 treats an explicit default=None as a default: -o must stay required."""
    assert_user_error(invoke(["synth"]), "Missing option '-o'")


def _every_command():
    """(path, command) of every subcommand this install lists, a group's commands included."""
    for name, point in group.available_commands().items():
        command = point.load()
        subcommands = getattr(command, "commands", {})
        yield from ((f"{name} {sub}", c) for sub, c in subcommands.items()) if subcommands else [(name, command)]


def test_threads_is_one_shared_option_everywhere():
    """--threads is tbps_runtime.clikit.threads_option on every command that runs PyTorch or onnxruntime."""
    from tbps_runtime.clikit import MAX_THREADS

    threaded = {path: param for path, command in _every_command() for param in command.params if param.name == "threads"}
    assert {"ablate", "calibrate", "eval", "export", "gallery reindex", "index", "ingest", "quickstart", "rank",
            "serve", "train"} <= set(threaded)
    for path, param in threaded.items():
        assert param.opts == ["--threads"] and (param.type.min, param.type.max) == (1, MAX_THREADS), path
    assert_user_error(invoke(["export", "--ckpt", "m.pt", "--threads", "0"]), "--threads")


def test_triton_output_is_required():
    assert_user_error(invoke(["triton", "--bundle", "b"]), "Missing option '-o'")
