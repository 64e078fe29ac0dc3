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
    """Plot each ``*_loss`` term and the total (left), validation R@1/5/10 (middle), and
    validation R@1 per slot group with the shared tokens' attention similarity (right)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    from matplotlib import pyplot as plt

    epochs = [r["epoch"] for r in history]
    figure, (losses, recall, parts) = plt.subplots(1, 3, figsize=(16, 4), dpi=100)
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
    _plot_parts(parts, [r for r in evaluated if "per_slot" in r["val"]])
    for axes in (losses, recall, parts):
        axes.grid(alpha=0.3)
    return _save(figure, path, title)


def _plot_parts(axes, evaluated: list[dict[str, Any]]) -> None:
    """R@1 of Eq. 14 restricted to each slot group, and how alike the D tokens' attention maps are."""
    axes.set(xlabel="epoch", ylabel="val R@1 (%)", title="slot groups; token attention cosine (dashed)",
             ylim=(0, 100))
    if not evaluated:
        return
    epochs = [r["epoch"] for r in evaluated]
    for group in ("global", "coarse", "fine", "all"):
        if group in evaluated[0]["val"]["per_slot"]:
            axes.plot(epochs, [r["val"]["per_slot"][group] for r in evaluated], marker="o", label=group)
    axes.legend(fontsize=8, loc="upper left")
    similarity = axes.twinx()
    for name in ("coarse_image_attention", "fine_text_attention"):
        values = [r["val"].get("token_cosine", {}).get(name) for r in evaluated]
        if all(v is not None for v in values):
            similarity.plot(epochs, values, linestyle="--", label=name.replace("_", " "))
    similarity.set(ylim=(0, 1.05), ylabel="mean pairwise cosine")
    similarity.legend(fontsize=7, loc="lower right")


# (history key path, panel title) of the token-specialisation picture, one panel each.
_TOKEN_PANELS = (
    (("token_cosine", "coarse_image_attention_centred"), "shared tokens' image attention\n(centred pairwise cosine)"),
    (("token_cosine", "fine_text_attention_centred"), "text tokens' word attention\n(centred pairwise cosine)"),
    (("token_query_cosine", "shared_queries"), "shared tokens' query vectors\n(pairwise cosine)"),
    (("per_slot", "coarse"), "val R@1 of the coarse slots (%)"),
)


def plot_token_specialisation(runs: dict[str, tuple[list[dict[str, Any]], int]], path: str | Path,
                              title: str = "") -> Path:
    """How alike the decoder's tokens stay as training goes: one line per run, x = training steps.

    ``runs`` maps a label to (the checkpoint's history, steps per epoch). A
    centred cosine near 1 means every token attends to the same positions
    (not specialised); near 0 or below, to different ones.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, len(_TOKEN_PANELS), figsize=(4.2 * len(_TOKEN_PANELS), 3.8), dpi=100)
    for ax, ((group, key), panel_title) in zip(axes, _TOKEN_PANELS):
        for label, (history, steps_per_epoch) in runs.items():
            points = [(r["epoch"] * steps_per_epoch, r["val"].get(group, {}).get(key))
                      for r in history if "val" in r]
            points = [(x, y) for x, y in points if y is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=label)
        ax.set(xlabel="training steps", title=panel_title)
        if group != "per_slot":
            ax.set_ylim(-0.3, 1.05)  # a cosine: the full range, so that "stuck at 1" reads as such
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    return _save(figure, path, title)


def _save(figure, path: str | Path, title: str) -> Path:
    """Title, lay out and write ``figure`` as a PNG atomically; closes it."""
    from matplotlib import pyplot as plt

    if title:
        figure.suptitle(title)
    figure.tight_layout()
    atomic_write(path, lambda stream: figure.savefig(stream, format="png"))
    plt.close(figure)
    return Path(path)
