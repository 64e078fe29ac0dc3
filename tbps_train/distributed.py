"""Data-parallel training across processes: ``torchrun --nproc_per_node N --no-python tbps train ...``.

One process per GPU (NCCL) or per CPU worker (gloo). The processes agree on
the global batches (one shuffle seeded by seed and epoch) and each takes a
contiguous share of every global batch, so N processes train on exactly the
batches one process would: the ranking losses mine hardest negatives over the
global batch (:meth:`Distributed.gather` keeps gradients), and the trainer
scales each share so DistributedDataParallel's gradient average equals the
one-process gradient. That is also why a run resumes at any world size.

torch's DistributedSampler is not used: it splits the epoch's order across
processes first and batches each part, so the batches (and therefore the
hardest negatives) would change with the number of processes.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from tbps_runtime.errors import ConfigError
from tbps_runtime.contract import shard_bounds

logger = logging.getLogger(__name__)

# Rows per collective when sharing the text-feature cache: bounds device memory under NCCL.
SHARE_BLOCK_ROWS = 2048


def check_device(device: str) -> None:
    """Refuse a device this machine's PyTorch cannot use, with what to use instead.

    Raises:
        ConfigError: not a torch device name, CUDA asked of a build or machine without it,
            or a GPU index beyond the machine's.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device {device!r} is not a device PyTorch knows: use cpu, cuda or cuda:N",
                          code="parameter_invalid", names=("device",)) from e
    if parsed.type == "cpu" or parsed.type == "mps" and torch.backends.mps.is_available():
        return
    if parsed.type != "cuda":
        raise ConfigError(f"device {device!r}: tbps trains and evaluates on cpu, cuda or cuda:N here",
                          code="parameter_invalid", names=("device",))
    if not torch.cuda.is_available():
        build = "a CPU-only build of PyTorch" if torch.version.cuda is None else "no usable GPU"
        raise ConfigError(f"device {device}: this machine has {build}; use device cpu, or install PyTorch with "
                          "CUDA on a machine with an NVIDIA GPU", code="device_without_cuda", device=device,
                          build=build)
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device}: this machine has {torch.cuda.device_count()} GPU(s), "
                          f"cuda:0..cuda:{torch.cuda.device_count() - 1}", code="parameter_invalid", names=("device",))


@dataclass
class Distributed:
    """This process's place in the job; world_size 1 (the default) is plain single-process training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    # The loss's gathers run on a group of their own, apart from DDP's gradient all-reduces.
    group: Any = None

    @classmethod
    def from_environment(cls, device: str) -> "Distributed":
        """Join the job torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR).

        ``device`` is the configured one: "cuda" becomes this process's GPU
        (cuda:LOCAL_RANK, NCCL); "cpu" uses gloo.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            check_device(device)
            return cls(device=device)
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            if torch.cuda.device_count() <= local_rank:
                raise ConfigError(f"process {rank} (local rank {local_rank}) has no GPU: this machine has "
                                  f"{torch.cuda.device_count()}; start at most that many processes per node")
            device, backend = f"cuda:{local_rank}", "nccl"
            torch.cuda.set_device(device)
        elif device == "cpu":
            backend = "gloo"
        else:
            raise ConfigError(f"distributed training runs on cpu (gloo) or cuda (NCCL), not on {device!r}")
        if not dist.is_initialized():
            # Generous: the other processes wait while rank 0 evaluates and writes the checkpoint.
            dist.init_process_group(backend, timeout=datetime.timedelta(hours=1))
        return cls(rank, world_size, local_rank, device, dist.new_group(backend=backend))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and evaluates."""
        return self.rank == 0

    def share(self, count: int) -> slice:
        """This process's contiguous part of ``count`` items (numpy.array_split's sizes)."""
        return slice(*shard_bounds(count, self.rank, self.world_size))

    def gather(self, tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Every process's rows in rank order, and where this process's rows start.

        Differentiable: the gradient reaching a gathered row is summed over
        all processes (each one's loss uses every row) and sent back to the
        process that owns it.
        """
        if not self.enabled:
            return tensor, 0
        sizes = self._sizes(len(tensor), tensor.device)
        start = sum(sizes[:self.rank])
        if tensor.requires_grad:
            return _GatherWithGradient.apply(tensor, sizes, self.rank, self.group), start
        return _all_gather(tensor, sizes, self.group), start

    def gather_in_blocks(self, tensor: torch.Tensor, block_rows: int = SHARE_BLOCK_ROWS) -> torch.Tensor:
        """Every process's rows of a CPU tensor, in rank order, moved through the device a block at a time."""
        if not self.enabled:
            return tensor
        device = torch.device(self.device)
        sizes = self._sizes(len(tensor), device)
        parts: list[list[torch.Tensor]] = [[] for _ in sizes]
        for block in range(math.ceil(max(sizes) / block_rows)):
            rows = slice(block * block_rows, (block + 1) * block_rows)
            block_sizes = [len(range(size)[rows]) for size in sizes]
            gathered = _all_gather(tensor[rows].to(device), block_sizes, self.group)
            for rank, piece in enumerate(gathered.split(block_sizes)):
                parts[rank].append(piece.cpu())
        return torch.cat([piece for rank_parts in parts for piece in rank_parts])

    def max(self, value: int) -> int:
        """The largest ``value`` over all processes."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.group)
        return int(tensor.item())

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over all processes (the same keys in every process)."""
        if not self.enabled or not values:
            return values
        names = sorted(values)
        tensor = torch.tensor([values[n] for n in names], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, group=self.group)
        return dict(zip(names, tensor.tolist()))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.group)

    def close(self) -> None:
        """Leave the process group (the last call of a distributed run)."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def _sizes(self, rows: int, device: torch.device | str) -> list[int]:
        size = torch.tensor([rows], device=device)
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size, group=self.group)
        return [int(s.item()) for s in sizes]


def _all_gather(tensor: torch.Tensor, sizes: list[int], group: Any) -> torch.Tensor:
    """all_gather for row counts that differ by process: pad to the longest, gather, trim."""
    longest = max(sizes)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[:len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


class _GatherWithGradient(torch.autograd.Function):
    """Forward: all processes' rows. Backward: the summed gradient of this process's rows.

    The backward is an all-reduce rather than a reduce-scatter because gloo
    has no reduce-scatter; the tensors are a batch of embeddings, small.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: list[int], rank: int, group: Any) -> torch.Tensor:
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return _all_gather(tensor.detach(), sizes, group)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor):
        gradient = gradient.contiguous().clone()
        dist.all_reduce(gradient, group=ctx.group)
        start = sum(ctx.sizes[:ctx.rank])
        return gradient[start:start + ctx.sizes[ctx.rank]], None, None, None
