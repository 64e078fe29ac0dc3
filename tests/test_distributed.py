"""Data-parallel training: N gloo processes on the CPU compute exactly what one process computes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddp_worker import build_model, one_step
from tbps_train.config import apply_overrides, load_preset
from tbps_train.distributed import Distributed
from tbps_train.losses import compute_losses
from tbps_train.model import TextBasedPersonSearch
from tbps_train.text import load_text_backbone
from tbps_train.train import TrainingPass

WORKER = Path(__file__).with_name("ddp_worker.py")
# The console script of this interpreter's install (PATH may not hold its bin directory).
TBPS_TRAIN = shutil.which("tbps-train", path=str(Path(sys.executable).parent)) or "tbps-train"
# vit_tiny has LayerNorm only: BatchNorm's per-process statistics (no SyncBatchNorm on CPU) would differ.
CONFIG = apply_overrides(load_preset("tiny"), "model", image_backbone="vit_tiny")


def torchrun(processes: int, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N`` with one thread per process (2-core CI)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_share_splits_a_batch_like_array_split():
    sizes = [Distributed(rank=r, world_size=3).share(7) for r in range(3)]
    assert [(s.start, s.stop) for s in sizes] == [(0, 3), (3, 5), (5, 7)]
    assert Distributed().share(5) == slice(0, 5)


@pytest.mark.parametrize("device, message", [
    ("cuda", "has no GPU"),  # this CPU machine, or more processes than GPUs
    ("mps", r"runs on cpu \(gloo\) or cuda \(NCCL\)"),
])
def test_a_device_distributed_training_cannot_use_is_refused(monkeypatch, device, message):
    from tbps_runtime.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match=message):
        Distributed.from_environment(device)


@pytest.fixture(scope="module")
def global_batch(tmp_path_factory):
    """A 7-pair global batch (shares of 4 and 3) whose identities repeat across the shares."""
    torch.manual_seed(0)
    text_backbone, _ = load_text_backbone("tiny", seed=0)
    model = TextBasedPersonSearch(CONFIG.model, text_backbone, num_identities=5)
    lengths = torch.tensor([6, 3, 5, 1, 6, 2, 4])
    payload = {
        "config": CONFIG.to_dict(),
        "num_identities": 5,
        "state_dict": model.state_dict(),
        "pixels": torch.randn(7, 3, *CONFIG.model.image_size),
        "hidden": torch.randn(7, 6, text_backbone.config.hidden_size),
        "mask": (torch.arange(6)[None, :] < lengths[:, None]).long(),
        "labels": torch.tensor([0, 1, 2, 0, 3, 1, 4]),
    }
    path = tmp_path_factory.mktemp("ddp") / "payload.pt"
    torch.save(payload, path)
    return path, payload


@pytest.mark.slow
def test_two_processes_step_equals_one_process_step(global_batch, tmp_path):
    """Eq. 13 and its gradients over a global batch: the shares of 2 gloo processes sum to the
    one-process loss, and DDP's averaged gradients equal the one-process gradients."""
    payload_path, payload = global_batch
    reference = one_step(payload, Distributed())
    torchrun(2, str(WORKER), str(payload_path), str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    assert set(ranks[0]["terms"]) == set(reference["terms"])
    for name, value in reference["terms"].items():
        shares = ranks[0]["terms"][name] + ranks[1]["terms"][name]
        torch.testing.assert_close(shares, value, rtol=1e-5, atol=1e-6, msg=name)
    assert set(ranks[0]["gradients"]) == set(reference["gradients"])
    for name, gradient in reference["gradients"].items():
        torch.testing.assert_close(ranks[0]["gradients"][name], ranks[1]["gradients"][name], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0]["gradients"][name], gradient, rtol=1e-4, atol=1e-6, msg=name)


def _simulated_shares(payload: dict, detach_other_shares: bool) -> dict[str, torch.Tensor]:
    """Two processes' shares computed in this process, gathering each other's embeddings by hand."""
    model, config = build_model(payload)
    forward = TrainingPass(model)
    shares = [slice(0, 4), slice(4, 7)]
    outputs = [forward(payload["pixels"][s], payload["hidden"][s], payload["mask"][s]) for s in shares]
    total = 0
    for rank, share in enumerate(shares):
        def gather(tensor: torch.Tensor, rank: int = rank) -> tuple[torch.Tensor, int]:
            if tensor.dtype == torch.int64:
                return payload["labels"], shares[rank].start
            which = next(i for i in (0, 1) if tensor is outputs[rank][i])  # image or text slots
            parts = [outputs[r][which] if r == rank or not detach_other_shares else outputs[r][which].detach()
                     for r in range(2)]
            return torch.cat(parts), shares[rank].start

        terms = compute_losses(*outputs[rank], payload["labels"][share], model.slot_groups(), config.loss, gather)
        total = total + sum(v for k, v in terms.items() if k.endswith("_loss"))
    total.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_shares_sum_to_the_global_batch_loss_and_gradient(global_batch):
    """compute_losses' shares, gathered by hand in one process: their sum is the one-process loss."""
    _, payload = global_batch
    reference = one_step(payload, Distributed())["gradients"]
    shared = _simulated_shares(payload, detach_other_shares=False)
    for name, gradient in reference.items():
        torch.testing.assert_close(shared[name], gradient, rtol=1e-4, atol=1e-6, msg=name)


def test_gathering_without_gradient_would_give_other_gradients(global_batch):
    """The control for the equivalence tests: hardest negatives from another process must pass
    their gradient back to it, and these batches are ones where that matters."""
    _, payload = global_batch
    reference = one_step(payload, Distributed())["gradients"]
    detached = _simulated_shares(payload, detach_other_shares=True)
    name = "decoder.attention.in_proj_weight"
    assert not torch.allclose(detached[name], reference[name], rtol=1e-3, atol=1e-5)


# Two processes sum each gradient as two all-reduced halves, one process in one pass: float32 rounding
# (~1e-7 relative, as another thread count gives) that Adam turns into steps of up to lr where a gradient
# is near zero. Measured after 2 epochs at lr 3e-3 (2-core AMD EPYC, torch 2.13.0 CPU): 1.55e-05 at most,
# in the image encoder's attention (one process at 1 vs 2 threads: 1.2e-07).
WORLD_SIZE_ATOL = 3e-5


def _train_args(root: Path, output: Path, epochs: int) -> list[str]:
    # lr 3e-3: Adam turns float noise into lr-sized steps, and the 1e-5 tolerance below was set at this rate.
    # --threads 1: the default follows the machine's load, and another thread count sums in another order.
    return ["--dataset", "cuhk-pedes", "--root", str(root), "--preset", "tiny", "--image-backbone", "vit_tiny",
            "--lr", "0.003", "--epochs", str(epochs), "--eval-every", "1", "--quiet", "--threads", "1",
            "-o", str(output)]


def _assert_same_weights(path: Path, reference: Path, atol: float) -> None:
    """Equal weights, except attention's key bias: softmax ignores it, so its true gradient is 0 and
    Adam turns the float noise left in it (~1e-9, different in each run) into lr-sized steps."""
    weights = torch.load(path, weights_only=True)["state_dict"]
    expected = torch.load(reference, weights_only=True)["state_dict"]
    assert weights.keys() == expected.keys()
    for name, value in expected.items():
        actual, value = weights[name].float(), value.float()
        if name.endswith("in_proj_bias"):  # (query, key, value) biases: drop the key's
            actual, value = actual.reshape(3, -1)[[0, 2]], value.reshape(3, -1)[[0, 2]]
        if name.endswith("in_proj_weight"):
            # The key projection has near-zero gradient along some directions too (softmax ignores
            # what all keys share), so Adam amplifies float noise there: up to 1.4e-5 after 2 epochs.
            dim = value.shape[1]
            torch.testing.assert_close(actual[dim:2 * dim], value[dim:2 * dim], rtol=0, atol=10 * atol, msg=name)
            actual, value = actual[list(range(dim)) + list(range(2 * dim, 3 * dim))], \
                value[list(range(dim)) + list(range(2 * dim, 3 * dim))]
        torch.testing.assert_close(actual, value, rtol=0, atol=atol,
                                   msg=f"{name}: max |difference| {(actual - value).abs().max():.2e}")


@pytest.mark.slow
def test_torchrun_training_matches_one_process_and_resumes_at_another_world_size(synth_root, tmp_path):
    """``torchrun --nproc_per_node 2 --no-python tbps-train`` writes (from rank 0 only) the checkpoint
    one process writes; a run started on 2 processes and resumed on 1 ends where 1 process ends."""
    from tbps_train.cli import train_command

    single = tmp_path / "single.pt"
    with pytest.raises(SystemExit) as exit_info:
        train_command(_train_args(synth_root, single, 2))
    assert exit_info.value.code == 0

    parallel = tmp_path / "parallel.pt"
    run = torchrun(2, "--no-python", TBPS_TRAIN, *_train_args(synth_root, parallel, 2))
    assert run.stdout.strip() == str(parallel)  # one process reports
    _assert_same_weights(parallel, single, atol=WORLD_SIZE_ATOL)
    history = torch.load(parallel, weights_only=True)["history"]
    expected = torch.load(single, weights_only=True)["history"]
    for epoch, reference_epoch in zip(history, expected, strict=True):
        for name in ("loss", "id_image_loss", "ranking_global_loss", "cmr_fine_loss"):
            assert epoch[name] == pytest.approx(reference_epoch[name], abs=2e-4), name
        # Rank 0 evaluated; weights equal to 1e-5 rank alike (near-ties may flip a few of the 36 captions).
        for key in ("r1", "r5", "r10", "map", "minp"):
            assert epoch["val"][key] == pytest.approx(reference_epoch["val"][key], abs=10), key
        assert epoch["val"]["per_slot"].keys() == reference_epoch["val"]["per_slot"].keys()

    resumed = tmp_path / "resumed.pt"
    torchrun(2, "--no-python", TBPS_TRAIN, *_train_args(synth_root, resumed, 1))
    with pytest.raises(SystemExit) as exit_info:
        train_command(["--resume", *_train_args(synth_root, resumed, 2)])
    assert exit_info.value.code == 0
    _assert_same_weights(resumed, single, atol=WORLD_SIZE_ATOL)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "parallel.curves.png", "parallel.pt", "resumed.curves.png", "resumed.pt", "single.curves.png", "single.pt",
    ]
