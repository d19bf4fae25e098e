"""PNG pictures of training: loss/accuracy curves, a confusion matrix, first-layer filters and feature maps.

Needs matplotlib (the ``plot`` extra); importing this module raises ImportError without it.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def training_curves(history: list[dict], path: str | Path) -> Path:
    """Loss and accuracy per epoch, train and test, side by side."""
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in [("train", "o-"), ("test", "s--")]:
        loss_ax.plot(epochs, [h[f"{split}_loss"] for h in history], style, label=split)
        acc_ax.plot(epochs, [100 * h[f"{split}_accuracy"] for h in history], style, label=split)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def confusion_matrix(confusion: np.ndarray, classes: list[str], path: str | Path) -> Path:
    """Counts with true classes as rows and predicted classes as columns."""
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.55 * k))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"confusion matrix: {np.trace(confusion) / max(confusion.sum(), 1):.2%} correct")
    threshold = confusion.max() / 2
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if confusion[i, j] > threshold else "black")
    return _save(fig, path)


def _grid(count: int) -> tuple[int, int]:
    cols = int(np.ceil(np.sqrt(count)))
    return -(-count // cols), cols


def _scaled(a: np.ndarray) -> np.ndarray:
    """a linearly mapped onto [0, 1] (a constant array maps to 0.5)."""
    lo, hi = float(a.min()), float(a.max())
    return np.full(a.shape, 0.5) if hi == lo else (a - lo) / (hi - lo)


def filters(weight: np.ndarray, path: str | Path, title: str = "first-layer filters") -> Path:
    """weight (K, C, R, S): one tile per filter, in colour when C == 3 (RGB), else channel 0 in grey,
    each tile scaled to its own range."""
    rows, cols = _grid(len(weight))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(weight):
            w = weight[i]
            ax.imshow(_scaled(w.transpose(1, 2, 0)) if w.shape[0] == 3 else _scaled(w[0]), cmap="gray",
                      interpolation="nearest")
            ax.set_title(str(i), fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def feature_maps(image: np.ndarray, maps: np.ndarray, path: str | Path, title: str) -> Path:
    """image (C, H, W) in [0, 1] next to maps (K, OH, OW), one tile per channel."""
    rows, cols = _grid(len(maps) + 1)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.5 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(image.transpose(1, 2, 0) if image.shape[0] == 3 else image[0], cmap="gray")
    axes.flat[0].set_title("input", fontsize=7)
    for i, m in enumerate(maps):
        axes.flat[i + 1].imshow(m, cmap="viridis")
        axes.flat[i + 1].set_title(f"map {i}", fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)
