"""Training curves: the loss terms and validation R@1 per epoch, as a PNG beside the checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tbps_runtime.atomic import atomic_write


def curves_path(checkpoint: str | Path) -> Path:
    """``runs/m.pt`` -> ``runs/m.curves.png``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".curves.png")


def plot_history(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Plot each ``*_loss`` term and the total (left) and validation R@1/5/10 (right)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    from matplotlib import pyplot as plt

    epochs = [r["epoch"] for r in history]
    figure, (losses, recall) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for name in [k for k in history[0] if k.endswith("_loss")] + ["loss"]:
        label = "total" if name == "loss" else name.removesuffix("_loss")
        losses.plot(epochs, [r.get(name, float("nan")) for r in history], label=label,
                    linewidth=2.5 if name == "loss" else 1.2)
    losses.set(xlabel="epoch", ylabel="loss (epoch mean)", title="training loss (Eq. 13 terms)")
    losses.legend(fontsize=8)
    evaluated = [r for r in history if "val" in r]
    for key in ("r1", "r5", "r10"):
        recall.plot([r["epoch"] for r in evaluated], [r["val"][key] for r in evaluated], marker="o",
                    label=f"R@{key[1:]}")
    recall.set(xlabel="epoch", ylabel="%", title="validation recall" if evaluated else "no validation split",
               ylim=(0, 100))
    if evaluated:
        recall.legend(fontsize=8)
    for axes in (losses, recall):
        axes.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    atomic_write(path, lambda stream: figure.savefig(stream, format="png"))
    plt.close(figure)
    return Path(path)
