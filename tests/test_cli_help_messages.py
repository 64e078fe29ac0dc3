"""What `tbps --help` and the commands' messages say: one complete summary line per command, commands of
a missing extra listed with their pip command, an int8 bundle's float32 image tower called so, a file
that is not a checkpoint refused in one line, and the commands named `tbps NAME`, not by their aliases."""

from __future__ import annotations

import json
import logging
import pickle
import re
import subprocess
import sys
import tomllib
import warnings
from importlib import metadata
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import tbps_runtime.cli as group
from cli_assertions import assert_user_error

ROOT = Path(__file__).resolve().parents[1]
ABBREVIATIONS = ("eq.", "e.g.", "i.e.", "vs.", "fig.", "cf.", "no.")


def invoke(args, **extra):
    return CliRunner().invoke(group.main, [str(a) for a in args], catch_exceptions=False, **extra)


def _command_rows(help_text: str) -> list[str]:
    return [line for line in help_text.split("Commands:")[1].splitlines() if line.strip()]


def _without(*distributions):
    """An ``_installed`` that reports ``distributions`` missing (an edge install)."""
    real = group._installed
    return lambda name: name not in distributions and real(name)


# ---- 1. one complete summary per command ------------------------------------------------------

def test_every_listed_command_has_one_complete_summary_line():
    """Not click's short help, cut at the first period ("calibrate  Record the Eq."): the first sentence,
    whole where it fits the line, and never ending on an abbreviation; in `tbps` and its groups."""
    from tbps_runtime.clikit import command_summary

    for width in (80, 100):
        for path in ([], ["gallery"], ["data"]):
            result = invoke([*path, "--help"], terminal_width=width)
            assert result.exit_code == 0, result.output
            ctx = click.Context(group.main, terminal_width=width)
            command = group.main if not path else group.main.get_command(ctx, path[0])
            names = command.list_commands(ctx)
            rows = _command_rows(result.output)
            assert [row.split()[0] for row in rows] == names  # one line each: no wrapped continuation lines
            text_width = width - min(max(map(len, names)), 30) - 4  # HelpFormatter.write_dl's text column
            for name, row in zip(names, rows):
                shown = row.split(None, 1)[1]
                summary = command_summary(command.get_command(ctx, name))
                assert not shown.lower().endswith(ABBREVIATIONS), row
                if len(summary) <= text_width:  # it fits: shown whole
                    assert shown == summary, (width, row)
                else:
                    assert shown.endswith("...") and summary.startswith(shown[:-3]), (width, row)
        assert "Record the Eq. 14 score above which a hit is trusted." in invoke(["--help"], terminal_width=80).output


def test_summary_is_the_first_sentence_not_cut_at_an_abbreviation():
    from tbps_runtime.clikit import command_summary

    command = click.Command("c", help="Rank by the Eq. 14 score, e.g. Market crops vs. CUHK ones. Then more.\n\n"
                                      "Details.")
    assert command_summary(command) == "Rank by the Eq. 14 score, e.g. Market crops vs. CUHK ones."
    assert command_summary(click.Command("c", help="No period at all")) == "No period at all"
    assert command_summary(click.Command("c", help="Long.", short_help="Short one.")) == "Short one."


def test_short_helps_of_the_exporter_fit_an_80_column_terminal():
    """Those set with short_help= are shown whole on an 80-column terminal."""
    result = invoke(["--help"], terminal_width=80)
    rows = dict(row.split(None, 1) for row in _command_rows(result.output))
    for name in ("calibrate", "export", "quickstart", "triton", "trt-selfcheck"):
        short = group.main.get_command(click.Context(group.main), name).short_help
        assert short and rows[name] == short


# ---- 2. a command whose extra is missing --------------------------------------------------------

def test_edge_install_lists_commands_of_missing_extras_with_their_pip_command(monkeypatch):
    monkeypatch.setattr(group, "_installed", _without("torch", "onnx", "av"))
    result = invoke(["--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    rows = dict(row.split(None, 1) for row in _command_rows(result.output))
    assert sorted(rows) == sorted(p.name for p in metadata.entry_points(group=group.ENTRY_POINT_GROUP))
    assert rows["train"] == "unavailable: pip install 'tbps[train]'"
    assert rows["export"] == "unavailable: pip install 'tbps[export]'"
    assert rows["ingest"] == "unavailable: pip install 'tbps[footage]'"
    assert rows["index"] == "Embed a gallery of person crops into g.npy + g.json."  # runnable ones as before


@pytest.mark.parametrize("args, extra, missing", [
    (["train", "--dataset", "x", "--epochs", "3"], "train", "torch"),
    (["export", "--help"], "export", "onnx, torch"),
    (["ingest", "--nosuchflag"], "footage", "av"),
])
def test_running_a_command_of_a_missing_extra_is_one_error_line(monkeypatch, args, extra, missing):
    monkeypatch.setattr(group, "_installed", _without("torch", "onnx", "av"))
    assert_user_error(invoke(args), f"tbps {args[0]} needs the {extra} extra", f"(missing: {missing})",
                      f"pip install 'tbps[{extra}]'")


def _declared_extras(name: str) -> tuple[str, ...]:
    """The extras pyproject.toml declares for the `tbps NAME` entry point (the installed metadata may be older)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    value = project["entry-points"][group.ENTRY_POINT_GROUP][name]
    return tuple(metadata.EntryPoint(name, value, group.ENTRY_POINT_GROUP).extras)


def test_synth_footage_declares_the_extra_it_needs(monkeypatch, tmp_path):
    """It writes video with PyAV (the [footage] extra) and imports no PyTorch: [footage], not [train]."""
    from tbps_train.cli import footage_command

    monkeypatch.setitem(sys.modules, "av", None)  # `import av` fails: PyAV not installed
    result = CliRunner().invoke(footage_command, ["-o", str(tmp_path / "f"), "--cameras", "1", "--seconds", "2",
                                                  "--fps", "2", "--size", "64", "64", "--people", "1", "-q"])
    needed = re.findall(r"pip install 'tbps\[(\w+)\]'", result.stderr)
    assert result.exit_code == 2 and needed == ["footage"], result.output
    assert _declared_extras("synth-footage") == ("footage",)
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'transformers'):\n"
            "            raise ImportError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from tbps_train.cli import footage_command\n"
            "footage_command.main(sys.argv[1:], prog_name='tbps synth-footage')\n")
    out = tmp_path / "without-torch"
    run = subprocess.run([sys.executable, "-c", code, "-o", str(out), "--cameras", "1", "--seconds", "2", "--fps",
                          "2", "--size", "64", "64", "--people", "1", "-q"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (out / "footage.json").is_file()


# ---- 3. an int8 bundle without calibration --------------------------------------------------------

def test_int8_without_calibration_says_the_image_tower_stayed_float32(fake_bundle, tmp_path, caplog):
    from tbps_export.quantize import quantize_bundle

    with caplog.at_level(logging.INFO, logger="tbps_export.quantize"):
        out = quantize_bundle(fake_bundle, tmp_path / "t.bundle", min_cosine=-1.0)  # the fake text tower is no model
    lines = [r.getMessage() for r in caplog.records if r.name == "tbps_export.quantize"]
    assert not [line for line in lines if line.startswith("image_tower int8 vs float32")], lines
    assert [line for line in lines if line.startswith("image_tower stayed float32")], lines
    assert [line for line in lines if line.startswith("text_tower int8 vs float32")], lines
    image = json.loads((out / "manifest.json").read_text())["parity"]["int8"]["image_tower"]
    assert image["precision"] == "float32" and image["compared"] is False and "min_cosine" not in image
    assert "tbps export --int8 --calibration" in image["why"]


# ---- 4. a file that is not a checkpoint -------------------------------------------------------------

@pytest.fixture()
def foreign_pickles(tmp_path):
    """A plain pickle (protocol 4, which makes PyTorch warn) and one torch.save of a non-tbps dict."""
    import torch

    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    saved = tmp_path / "x.pt"
    torch.save({"a": 1}, saved)
    return plain, saved


def test_a_foreign_pickle_is_refused_in_one_short_line_without_warnings(foreign_pickles):
    from tbps_runtime.errors import CheckpointError, OutputError
    from tbps_train.checkpoint import check_checkpoint_output, load_checkpoint

    for path in foreign_pickles:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(CheckpointError) as error:
                load_checkpoint(path)
            with pytest.raises(OutputError):
                check_checkpoint_output(path)
        assert [str(w.message) for w in caught] == []
        message = str(error.value)
        assert "\n" not in message and len(message) < 200 and "weights_only" not in message, message
        assert message.startswith(f"{path} is not a tbps checkpoint")


@pytest.mark.parametrize("command", [["export", "--ckpt", "{ckpt}", "-o", "{tmp}/o.bundle"],
                                     ["eval", "--ckpt", "{ckpt}", "--dataset", "cuhk-pedes", "--root", "{tmp}"]])
def test_export_and_eval_of_a_plain_pickle_print_one_error_line(foreign_pickles, tmp_path, command):
    """Run as a user runs it: PyTorch's "Detected pickle protocol" warning would reach stderr."""
    args = [a.format(ckpt=foreign_pickles[0], tmp=tmp_path) for a in command]
    run = subprocess.run([sys.executable, "-c", "import sys; from tbps_runtime.cli import main; main(prog_name='tbps')",
                          *args], capture_output=True, text=True, cwd=tmp_path)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert lines[0] == f"error: {foreign_pickles[0]} is not a tbps checkpoint (torch.load cannot read it: " \
                       "UnpicklingError)"


# ---- 5. commands named `tbps NAME` ------------------------------------------------------------------

def test_messages_name_commands_not_their_old_aliases(tmp_path):
    from tbps_runtime.errors import BundleError
    from tbps_runtime.model.bundle import load_manifest

    with pytest.raises(BundleError) as error:
        load_manifest(tmp_path)
    assert "made by tbps export" in str(error.value) and "tbps-" not in str(error.value)

