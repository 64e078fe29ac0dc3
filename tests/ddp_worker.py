"""One training step, in one process or as one of a torchrun job; used by test_distributed.py.

    torchrun --nproc_per_node 2 tests/ddp_worker.py PAYLOAD OUT_DIR

PAYLOAD (torch.save) holds a config dict, a state dict and one global batch;
each process writes OUT_DIR/rank<R>.pt with its loss terms and the gradients
after backward (DDP has averaged them over processes by then).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tbps_train.config import RunConfig
from tbps_train.distributed import Distributed
from tbps_train.model import TextBasedPersonSearch
from tbps_train.text import load_text_backbone
from tbps_train.train import train_step, wrap_for_data_parallel


def build_model(payload: dict) -> tuple[TextBasedPersonSearch, RunConfig]:
    """The payload's model in training mode, and its config."""
    config = RunConfig.from_dict(payload["config"])
    text_backbone, _ = load_text_backbone(config.model.text_backbone, seed=0)
    model = TextBasedPersonSearch(config.model, text_backbone, payload["num_identities"])
    model.load_state_dict(payload["state_dict"])
    return model.train(), config


def one_step(payload: dict, distributed: Distributed) -> dict:
    """This process's share of the global batch through one step: loss terms and gradients."""
    model, config = build_model(payload)
    forward = wrap_for_data_parallel(model, config, distributed)
    share = distributed.share(len(payload["labels"]))
    gather = distributed.gather if distributed.enabled else None
    terms = train_step(model, payload["pixels"][share], payload["hidden"][share], payload["mask"][share],
                       payload["labels"][share], config, forward, gather)
    loss = sum(v for k, v in terms.items() if k.endswith("_loss"))
    (loss * distributed.world_size).backward()
    return {
        "terms": {k: v.detach() for k, v in terms.items()},
        "gradients": {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None},
    }


if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    payload_path, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    distributed = Distributed.from_environment("cpu")
    result = one_step(torch.load(payload_path, weights_only=True), distributed)
    torch.save(result, out_dir / f"rank{distributed.rank}.pt")
    distributed.close()
