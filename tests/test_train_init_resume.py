"""Fine-tuning a checkpoint on other people (``--init``), resuming only on the data a checkpoint was trained
on, a full disk while the checkpoint is written, and the quickstart's evaluation bar and time estimate."""

from __future__ import annotations

import csv
import dataclasses
import errno
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli_assertions import assert_user_error
from tbps_runtime.atomic import sha256_file
from tbps_runtime.errors import CheckpointError, ConfigError, OutputError
from tbps_train.checkpoint import load_checkpoint, save_checkpoint
from tbps_train.config import RunConfig, apply_overrides, load_preset
from tbps_train.data.readers import read_split
from tbps_train.train import CLASSIFIER_PREFIX, InitSource, Trainer, init_model, train

TEAM_IDS = 10  # synth_root's test people, the team's train split (the base model knows 24 others)


def _run(command, args):
    return CliRunner().invoke(command, [str(a) for a in args])


def _one_error_line(result, *fragments):
    """Exit status 2 and one ``error:`` line, the last, holding each fragment; no traceback. (A resumed tiny
    run may log a warning line before it: its slots collapse.)"""
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def _tiny(epochs: int = 1) -> RunConfig:
    return apply_overrides(load_preset("tiny"), "train", epochs=epochs)


@pytest.fixture(scope="module")
def base(tmp_path_factory, synth_root):
    """A tiny model trained one epoch on ``synth_root`` (24 identities): what the runs here start from."""
    path = tmp_path_factory.mktemp("base") / "base.pt"
    train(_tiny(), "cuhk-pedes", synth_root, path, progress=False, threads=1)
    return path


def _team_csv(folder: Path, synth_root: Path, edit=lambda caption: caption) -> Path:
    """``synth_root``'s test people as a team's csv (train; its val people validate), captions through
    ``edit``; images through a link to synth_root's imgs/."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "imgs").exists():
        (folder / "imgs").symlink_to(Path(synth_root) / "imgs", target_is_directory=True)
    rows = [(r.image_path.relative_to(synth_root).as_posix(), f"person {r.person_id}", edit(caption), split)
            for source, split in (("test", "train"), ("val", "val"))
            for r in read_split("cuhk-pedes", synth_root, source) for caption in r.captions]
    path = folder / "annotations.csv"
    with open(path, "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows([("image", "person_id", "caption", "split"), *rows])
    return path


@pytest.fixture()
def team(tmp_path, synth_root):
    return _team_csv(tmp_path / "team", synth_root)


# ---------------------------------------------------------------- --init: fine-tuning on other people
def test_init_keeps_every_weight_but_a_new_classifier(base, team, tmp_path):
    source = InitSource.load(base)
    trainer = Trainer(_tiny(), "csv", team, tmp_path / "ft.pt", progress=False, threads=1, init=source)
    before = trainer.model.state_dict()  # before the first step
    trained = source.payload["state_dict"]
    kept = [k for k in trained if not k.startswith(CLASSIFIER_PREFIX)]
    assert any(k.startswith("image_backbone.") for k in kept) and any(k.startswith("text_backbone.") for k in kept)
    for key in kept:
        torch.testing.assert_close(before[key], trained[key], rtol=0, atol=0, msg=key)
    classifiers = [v for k, v in before.items() if k.startswith(CLASSIFIER_PREFIX)]
    slots, dim = trainer.config.model.num_slots, trainer.config.model.embed_dim
    assert len(classifiers) == slots and all(c.shape == (TEAM_IDS, dim) for c in classifiers)
    assert source.payload["num_identities"] == 24  # it really is a new classifier, of another size
    assert trainer.tokenizer_json == source.payload["tokenizer_json"]
    assert trainer.config.train.image_weights is None  # the backbone's weights are the checkpoint's


def test_init_refuses_model_settings_that_change_the_weights(base):
    source = InitSource.load(base)
    trained = source.config.model
    for change in ({"num_coarse": 3}, {"image_size": (128, 32)}, {"text_backbone": "minilm"},
                   {"image_backbone": "resnet_small"}):
        (name,) = change
        with pytest.raises(ConfigError, match=f"{name} .*the checkpoint's: ") as info:
            init_model(source, dataclasses.replace(trained, **change), 5)
        assert info.value.facts["settings"] == [name]
    # Settings no kept weight depends on are the new run's to choose (the classifiers are new anyway).
    model = init_model(source, dataclasses.replace(trained, token_init="orthogonal", use_coarse=False), 5)
    assert len(model.id_classifiers) == 1 + trained.num_fine and model.id_classifiers[0].out_features == 5
    torch.testing.assert_close(model.shared_tokens, source.model.shared_tokens, rtol=0, atol=0)


def test_cli_fine_tunes_a_checkpoint_on_a_csv_dataset(base, team, tmp_path):
    from tbps_train.cli import train_command

    output = tmp_path / "ft.pt"
    result = _run(train_command, ["--dataset", "csv", "--root", team, "-o", output, "--init", base,
                                  "--epochs", 1, "--threads", 1, "--quiet"])  # the demo preset's training
    assert result.exit_code == 0, result.output
    payload, started = load_checkpoint(output), load_checkpoint(base)
    assert payload["num_identities"] == TEAM_IDS
    assert payload["init"]["name"] == "base.pt" and payload["init"]["sha256"] == sha256_file(base)
    assert payload["init"]["dataset"]["name"] == "cuhk-pedes" and payload["init"]["num_identities"] == 24
    config = RunConfig.from_dict(payload["config"])
    assert config.model == RunConfig.from_dict(started["config"]).model  # the checkpoint's tiny model
    assert config.train == dataclasses.replace(load_preset("demo").train, epochs=1, image_weights=None)
    assert payload["tokenizer_json"] == started["tokenizer_json"]
    assert payload["image_weights"] == {"source": "init", "path": str(base.absolute()), "sha256": sha256_file(base)}
    assert payload["state_dict"]["id_classifiers.0.weight"].shape[0] == TEAM_IDS


def test_cli_init_refusals(base, team, tmp_path):
    from tbps_train.cli import train_command

    output = tmp_path / "ft.pt"
    common = ["--dataset", "csv", "--root", team, "-o", output, "--preset", "tiny", "--epochs", 1, "--quiet"]
    assert_user_error(_run(train_command, [*common, "--init", base, "--resume"]), "--resume", "--init", "not both")
    assert_user_error(_run(train_command, [*common, "--init", base, "--num-coarse", 3]), "num_coarse 3",
                      "the checkpoint's: 2", str(base))
    assert_user_error(_run(train_command, [*common, "--init", base, "--image-weights", "packaged"]),
                      "--image-weights")
    assert_user_error(_run(train_command, [*common, "--init", tmp_path / "nothing.pt"]), "not found")
    assert not output.exists()
    copy = tmp_path / "copy.pt"
    shutil.copy(base, copy)
    assert_user_error(_run(train_command, [*common[:4], "-o", copy, *common[6:], "--init", copy]),
                      "is the checkpoint --init starts from")
    assert sha256_file(copy) == sha256_file(base)


# ---------------------------------------------------------------- --resume: only on the same data
def test_resume_refuses_other_data_with_as_many_identities(team, synth_root, tmp_path):
    from tbps_train.cli import train_command

    checkpoint = tmp_path / "m.pt"
    train(_tiny(), "csv", team, checkpoint, progress=False, threads=1)
    fingerprint = load_checkpoint(checkpoint)["dataset"]["train_fingerprint"]
    before = sha256_file(checkpoint)
    other = _team_csv(tmp_path / "other", synth_root, edit=lambda c: c + " indeed")  # as many people
    with pytest.raises(CheckpointError, match="was trained on the train split of csv .*team.*, not on the train "
                                              "split of csv .*other") as info:
        train(_tiny(2), "csv", other, checkpoint, resume=True, progress=False, threads=1)
    assert info.value.facts["trained_on"]["root"] == str(team)
    resume = ["--dataset", "csv", "-o", checkpoint, "--resume", "--epochs", 2, "--threads", 1, "--quiet"]
    assert_user_error(_run(train_command, [*resume, "--root", other]), str(team), str(other), fingerprint[:12])
    _team_csv(team.parent, synth_root, edit=lambda c: c.upper())  # the same file, edited since
    assert_user_error(_run(train_command, [*resume, "--root", team]), "has changed since")
    assert sha256_file(checkpoint) == before
    _team_csv(team.parent, synth_root)  # back as it was: resumes
    train(_tiny(), "csv", team, checkpoint, resume=True, resume_epochs=2, progress=False, threads=1)
    assert len(load_checkpoint(checkpoint)["history"]) == 2


def test_a_checkpoint_without_a_fingerprint_resumes_with_a_warning(team, tmp_path, caplog):
    checkpoint = tmp_path / "m.pt"
    train(_tiny(), "csv", team, checkpoint, progress=False, threads=1)
    payload = load_checkpoint(checkpoint)
    fingerprint = payload["dataset"].pop("train_fingerprint")  # as an older tbps wrote it
    save_checkpoint(checkpoint, payload)
    with caplog.at_level(logging.WARNING, logger="tbps_train.train"):
        train(_tiny(), "csv", team, checkpoint, resume=True, resume_epochs=2, progress=False, threads=1)
    assert "records no fingerprint of its training data" in caplog.text and str(team) in caplog.text
    payload = load_checkpoint(checkpoint)
    assert len(payload["history"]) == 2 and payload["dataset"]["train_fingerprint"] == fingerprint


# ---------------------------------------------------------------- a full disk while the checkpoint is written
@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory, synth_root):
    """A tiny run of one epoch on ``synth_root``, to resume (copy it first)."""
    path = tmp_path_factory.mktemp("one") / "m.pt"
    train(_tiny(), "cuhk-pedes", synth_root, path, progress=False, threads=1)
    return path


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),  # torch's own
], ids=["enospc", "torch-unexpected-pos"])
def test_a_full_disk_is_one_error_line_and_the_checkpoint_is_kept(error, one_epoch, synth_root, tmp_path,
                                                                  monkeypatch):
    from tbps_train.cli import train_command

    checkpoint = tmp_path / "m.pt"
    shutil.copy(one_epoch, checkpoint)

    def full(payload, stream, *args, **kwargs):
        stream.write(b"PK\x03\x04 partial")
        raise error

    monkeypatch.setattr(torch, "save", full)
    result = _run(train_command, ["--dataset", "cuhk-pedes", "--root", synth_root, "-o", checkpoint, "--resume",
                                  "--epochs", 2, "--threads", 1, "--quiet"])
    _one_error_line(result, f"cannot write the checkpoint {checkpoint} after epoch 2", "full",
                      "the previous checkpoint there is unchanged")
    assert sha256_file(checkpoint) == sha256_file(one_epoch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temp file left behind
    with pytest.raises(OutputError, match="nothing was written"):  # a first epoch: no previous checkpoint
        train(_tiny(), "cuhk-pedes", synth_root, tmp_path / "new.pt", progress=False, threads=1)
    assert not (tmp_path / "new.pt").exists()


@pytest.fixture()
def full_disk(tmp_path):
    """``full_disk(checkpoint)``: a small tmpfs holding a copy of ``checkpoint``, then filled but for 16 KiB;
    skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()

    def make(checkpoint: Path) -> Path:
        size = checkpoint.stat().st_size + (1 << 20)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mount], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
        shutil.copy(checkpoint, mount / checkpoint.name)
        with open(mount / "filler", "wb") as stream:
            while shutil.disk_usage(mount).free > 16 << 10:
                stream.write(b"\0" * 4096)
                stream.flush()
        return mount / checkpoint.name
    try:
        yield make
    finally:
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)


def test_resuming_into_a_full_disk(one_epoch, synth_root, full_disk):
    from tbps_train.cli import train_command

    checkpoint = full_disk(one_epoch)
    result = _run(train_command, ["--dataset", "cuhk-pedes", "--root", synth_root, "-o", checkpoint, "--resume",
                                  "--epochs", 2, "--threads", 1, "--quiet"])
    _one_error_line(result, f"cannot write the checkpoint {checkpoint}", "the disk is full",
                      "the previous checkpoint there is unchanged")
    assert sha256_file(checkpoint) == sha256_file(one_epoch)
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["filler", "m.pt"]


# ---------------------------------------------------------------- the quickstart: evaluation bar, time estimate
class _Bars:
    """Stands in for tqdm in tbps_train.evaluate: records every bar and how far it went."""

    def __init__(self):
        self.made = []
        recorder = self

        class Bar:
            def __init__(self, iterable=None, **options):
                self.iterable, self.options, self.n = iterable, options, 0
                recorder.made.append(self)

            def __iter__(self):
                for item in self.iterable:
                    self.n += 1
                    yield item

            def update(self, count=1):
                self.n += count

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        self.Bar = Bar


def test_quickstart_evaluation_has_one_bar_over_images_and_captions(base, synth_root, tmp_path, monkeypatch):
    from tbps_export import quickstart
    from tbps_train import evaluate

    bars = _Bars()
    monkeypatch.setattr(evaluate, "tqdm", bars.Bar)
    metrics = quickstart._evaluation(base, synth_root, tmp_path / "eval.json", quiet=False)
    records = read_split("cuhk-pedes", synth_root, "test")
    (bar,) = [b for b in bars.made if b.options.get("desc") == "evaluate"]
    total = len(records) + sum(len(r.captions) for r in records)
    assert bar.options["total"] == total and bar.n == total
    assert bar.options["disable"] is None  # tqdm's own rule: drawn on a terminal only
    assert set(metrics) >= {"r1", "map"} and (tmp_path / "eval.json").is_file()
    bars.made.clear()
    quickstart._evaluation(base, synth_root, tmp_path / "again.json", quiet=True)
    assert [b.options["disable"] for b in bars.made if b.options.get("desc") == "evaluate"] == [True]


def _workload(**counts):
    from tbps_export.quickstart import Workload

    values = dict(batch_size=16, steps_per_epoch=10, epochs=10, eval_every=0, val_images=0, val_captions=0,
                  test_images=40, test_captions=80, examples=4)
    return Workload(**{**values, **counts})


def test_the_estimate_comes_from_the_timed_training_steps(caplog):
    from tbps_export import quickstart

    ticks = iter([100.0, 102.5, 105.0, 107.5, 110.0, 112.5])  # 2.5 s a step after the first; a 7th read fails
    eta = quickstart.Eta(_workload(), clock=lambda: next(ticks))
    eta.announce("evaluation")
    with caplog.at_level(logging.INFO, logger="tbps_export.quickstart"):
        for done in range(1, 6):
            eta.on_step(done, 100)
        assert eta.step_seconds is None and "estimate" not in caplog.text
        for done in range(6, 101):
            eta.on_step(done, 100)
        eta.announce("evaluation")
    assert eta.step_seconds == 2.5
    unit = 2.5 / 16  # seconds per training sample
    assert eta.plan["training"] == pytest.approx(94 * 2.5)  # the 94 steps left
    assert eta.plan["evaluation"] == pytest.approx((40 + 80) * quickstart.EVAL_ITEM_SAMPLES * unit)
    assert eta.plan["index"] == pytest.approx(40 * quickstart.ONNX_IMAGE_SAMPLES * unit)
    assert eta.plan["export"] == pytest.approx(max(quickstart.EXPORT_STEPS * 2.5, quickstart.EXPORT_MIN_SECONDS))
    lines = [r.getMessage() for r in caplog.records]
    (estimate,) = [line for line in lines if "estimate on this machine" in line]
    assert f"about {quickstart._duration(sum(eta.plan.values()))} to go" in estimate
    assert "training 4 min" in estimate and "2.50 s per training step" in estimate
    left = sum(seconds for name, seconds in eta.plan.items() if name != "training")
    assert lines[-1].strip() == f"ETA: about {quickstart._duration(left)} left in all"
    assert quickstart._duration(42.4) == "42 s" and quickstart._duration(4000) == "1 h 7 min"


def test_validations_left_are_priced_too():
    work = _workload(eval_every=2, val_images=10, val_captions=20)
    with_val = work.samples(35)["training"]  # epochs 7-10 left: validations after 8 and 10
    assert with_val == 35 * 16 + 2 * 30 * 0.5


def test_training_times_its_steps_for_the_estimate(synth_root, tmp_path, caplog):
    from tbps_export.quickstart import Eta, Workload

    config = _tiny(2)
    now = [0.0]

    def clock():
        now[0] += 1.5
        return now[0]

    eta = Eta(Workload.of(config, synth_root, 4), clock=clock)
    totals = []
    with caplog.at_level(logging.INFO, logger="tbps_export.quickstart"):
        train(config, "cuhk-pedes", synth_root, tmp_path / "m.pt", progress=False, threads=1,
              on_step=lambda done, total: (totals.append(total), eta.on_step(done, total)))
    assert eta.step_seconds == 1.5 and "1.50 s per training step" in caplog.text
    assert set(totals) == {2 * eta.work.steps_per_epoch} and len(totals) == totals[0]  # every step, as counted
    assert eta.plan["training"] == pytest.approx(1.5 * (totals[0] - 6))
