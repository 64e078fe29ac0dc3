"""Every training command on synthetic data, and the user-error contract: status 2, one line, no traceback."""

import json
import subprocess

import pytest
from click.testing import CliRunner

from tbps_train.cli import ablate_command, eval_command, synth_command, train_command
from cli_assertions import assert_user_error


def run(command, args):
    result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
    return result


def test_synth_writes_a_readable_dataset(tmp_path):
    result = run(synth_command, ["--out", tmp_path / "d", "--ids", 6, "--images-per-id", 2, "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "reid_raw.json").is_file()
    again = run(synth_command, ["--out", tmp_path / "d", "--ids", 6, "--quiet"])
    assert_user_error(again)


def test_train_then_eval_json(tmp_path, synth_root):
    checkpoint = tmp_path / "m.pt"
    result = run(train_command, ["--dataset", "cuhk-pedes", "--root", synth_root, "-o", checkpoint,
                                 "--preset", "tiny", "--epochs", 1, "--quiet"])
    assert result.exit_code == 0, result.output
    assert checkpoint.is_file()
    result = run(eval_command, ["--ckpt", checkpoint, "--dataset", "cuhk-pedes", "--root", synth_root, "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)  # one JSON document, nothing else on stdout
    assert set(metrics) == {"r1", "r5", "r10", "map", "minp"}
    assert all(0 <= v <= 100 for v in metrics.values())


def test_eval_on_val_split_text_output(tiny_checkpoint, synth_root):
    result = run(eval_command, ["--ckpt", tiny_checkpoint, "--dataset", "cuhk-pedes", "--root", synth_root,
                                "--split", "val"])
    assert result.exit_code == 0
    assert "R@1" in result.stdout and "mINP" in result.stdout


@pytest.mark.parametrize("args, fragments", [
    (["--ckpt", "{tmp}/missing.pt"], ["checkpoint not found"]),
    (["--ckpt", "{garbage}"], ["not a tbps checkpoint"]),
    (["--ckpt", "{ckpt}", "--root", "{tmp}/nowhere"], ["does not exist"]),
    (["--ckpt", "{ckpt}", "--split", "bogus"], ["bogus"]),
    (["--ckpt", "{ckpt}", "--dataset", "rstpreid"], ["data_captions.json"]),
])
def test_eval_bad_input(tmp_path, tiny_checkpoint, synth_root, args, fragments):
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("hello")
    values = {"tmp": tmp_path, "garbage": garbage, "ckpt": tiny_checkpoint}
    argv = [a.format(**values) for a in args]
    defaults = {"--dataset": "cuhk-pedes", "--root": str(synth_root)}
    for flag, value in defaults.items():
        if flag not in argv:
            argv += [flag, value]
    assert_user_error(run(eval_command, argv), *fragments)


def test_train_bad_input(tmp_path, synth_root):
    base = ["--dataset", "cuhk-pedes", "-o", tmp_path / "m.pt", "--preset", "tiny", "--quiet"]
    assert_user_error(run(train_command, base + ["--root", tmp_path / "nowhere"]), "does not exist")
    assert_user_error(run(train_command, base + ["--root", synth_root, "--image-backbone", "resnet9000"]),
                      "resnet9000")
    assert_user_error(run(train_command, base + ["--root", synth_root, "--image-weights", tmp_path / "w.pt"]),
                      "not found")
    assert not (tmp_path / "m.pt").exists()


def test_ablate_seeds_summary_and_reuse(tmp_path, synth_root):
    out = tmp_path / "ablation"
    argv = ["--dataset", "cuhk-pedes", "--root", synth_root, "--preset", "tiny", "--epochs", 1,
            "--out-dir", out, "--rows", "baseline,full", "--seeds", "0,1", "--quiet"]
    result = run(ablate_command, argv)
    assert result.exit_code == 0, result.output
    document = json.loads((out / "ablation.json").read_text())
    runs = {(r["row"], r["seed"]): r for r in document["runs"]}
    assert set(runs) == {("baseline", 0), ("baseline", 1), ("full", 0), ("full", 1)}
    assert [r["K"] for r in document["summary"]] == [1, 5]  # tiny preset: D = P = 2
    assert all(r["selection"] == "last epoch" and "per_slot" in r["test"] for r in runs.values())
    full = document["summary"][1]
    values = [runs[("full", s)]["test"]["r1"] for s in (0, 1)]
    assert full["test_r1"] == pytest.approx(sum(values) / 2, abs=0.01)
    assert full["test_r1_std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5, abs=0.01)
    assert "± " in (out / "ablation.md").read_text()
    # A rerun reuses every finished run: nothing is retrained.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.pt")}
    assert run(ablate_command, argv).exit_code == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.pt")} == stamps
    # A damaged run record is named, never a traceback.
    (out / "full-s1.json").write_text('{"row": "full", "test": ')
    assert_user_error(run(ablate_command, argv), "full-s1.json", "delete it")


def test_ablate_bad_rows_and_seeds(tmp_path, synth_root):
    base = ["--dataset", "cuhk-pedes", "--root", synth_root, "--preset", "tiny", "--out-dir", tmp_path / "a"]
    assert_user_error(run(ablate_command, base + ["--rows", "table9"]), "unknown ablation row 'table9'")
    assert_user_error(run(ablate_command, base + ["--seeds", "0,x"]), "--seeds")


def test_console_scripts_are_installed():
    for name in ("tbps-synth", "tbps-train", "tbps-eval", "tbps-ablate", "tbps-quickstart"):
        result = subprocess.run([name, "--help"], capture_output=True, text=True)
        assert result.returncode == 0, (name, result.stderr)
