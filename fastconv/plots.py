"""PNG pictures of training: loss/accuracy curves, a confusion matrix, first-layer filters and feature maps.

Each picture has a ``*_figure`` function that returns the matplotlib Figure (what the tests read) and a
function that writes it to a PNG and returns the path. Needs matplotlib (the ``plot`` extra); importing
this module raises ImportError without it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 110
TILE_INCHES = 1.5  # one filter or feature map: 165 px at DPI, 33 px per weight of a 5x5 filter


def _figure(width: float, height: float) -> Figure:
    """A Figure on the Agg canvas with constrained layout (no pyplot, no global state)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def curves_figure(history: list[dict], title: str = "") -> Figure:
    """Loss and accuracy per epoch, side by side: train (the mean over the epoch's batches, while the weights
    learn) and test (after the epoch). Epochs are whole numbers on the x axis; ``title`` names the run."""
    epochs = [h["epoch"] for h in history]
    fig = _figure(10, 4.4)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for split, style, what in [("train", "o-", "mean over the epoch"), ("test", "s--", "after the epoch")]:
        loss_ax.plot(epochs, [h[f"{split}_loss"] for h in history], style, label=f"{split} ({what})")
        acc_ax.plot(epochs, [100 * h[f"{split}_accuracy"] for h in history], style, label=f"{split} ({what})")
    last = history[-1]
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)",
               title=f"accuracy: test {last['test_accuracy']:.2%} after epoch {last['epoch']}")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def training_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Write :func:`curves_figure` to ``path``."""
    return _save(curves_figure(history, title), path)


def confusion_figure(confusion: np.ndarray, classes: list[str]) -> Figure:
    """Counts with true classes as rows and predicted classes as columns; the title gives the accuracy."""
    k = len(classes)
    fig = _figure(1.4 + 0.55 * k, 1.2 + 0.55 * k)
    ax = fig.subplots()
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
    return fig


def confusion_matrix(confusion: np.ndarray, classes: list[str], path: str | Path) -> Path:
    """Write :func:`confusion_figure` to ``path``."""
    return _save(confusion_figure(confusion, classes), path)


def _grid_size(count: int) -> tuple[int, int]:
    """(rows, columns) of a grid of ``count`` tiles: from square to about twice as wide as tall, the one
    with the fewest empty cells (7 tiles: 2 x 4, not 3 x 3)."""
    widths = range(int(np.ceil(np.sqrt(count))), int(np.ceil(np.sqrt(2 * count))) + 1)
    cols = min(widths, key=lambda c: (-count % c, c))
    return -(-count // cols), cols


def _tiles(fig: Figure, count: int) -> list:
    """A grid (``_grid_size``) of ``count`` image axes without ticks; the unused cells are hidden."""
    axes = fig.subplots(*_grid_size(count), squeeze=False).flat
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[count:]:
        ax.set_visible(False)
    return list(axes[:count])


def filters_figure(weight: np.ndarray, title: str = "first-layer filters") -> Figure:
    """weight (K, C, R, S): one tile per output channel k. One channel (C == 1, or channel 0 of C != 3)
    is drawn on one diverging colour scale shared by every filter, symmetric about 0 (white), with its colour
    bar; RGB filters (C == 3) are drawn in colour through one linear map of all K filters' weights onto
    [0, 1], which the title states."""
    weight = np.asarray(weight, dtype=np.float64)
    rows, cols = _grid_size(len(weight))
    fig = _figure(TILE_INCHES * cols + 1.2, TILE_INCHES * rows + 0.8)
    axes = _tiles(fig, len(weight))
    if weight.shape[1] == 3:
        lo, hi = float(weight.min()), float(weight.max())
        scaled = (weight - lo) / (hi - lo) if hi > lo else np.full(weight.shape, 0.5)
        for k, ax in enumerate(axes):
            ax.imshow(scaled[k].transpose(1, 2, 0), interpolation="nearest")
            ax.set_title(f"out {k}", fontsize=8)
        title += f"\nRGB, one scale for all filters: weight {lo:.3g} -> 0, {hi:.3g} -> 1"
    else:
        limit = float(np.abs(weight[:, 0]).max()) or 1.0
        for k, ax in enumerate(axes):
            image = ax.imshow(weight[k, 0], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
            ax.set_title(f"out {k}", fontsize=8)
        fig.colorbar(image, ax=axes, shrink=0.8, label="weight" + (" (input channel 0)" if weight.shape[1] > 1 else ""))
    fig.suptitle(title)
    return fig


def filters(weight: np.ndarray, path: str | Path, title: str = "first-layer filters") -> Path:
    """Write :func:`filters_figure` to ``path``."""
    return _save(filters_figure(weight, title), path)


def feature_maps_figure(image: np.ndarray, maps: np.ndarray, title: str) -> Figure:
    """image (C, H, W) in [0, 1] (grey, or RGB when C == 3) in the first tile, then maps (K, OH, OW), one
    tile per channel k, all K on one colour scale from the smallest to the largest value of any map, with
    its colour bar."""
    rows, cols = _grid_size(len(maps) + 1)
    fig = _figure(TILE_INCHES * cols + 1.2, TILE_INCHES * rows + 0.9)
    axes = _tiles(fig, len(maps) + 1)
    axes[0].imshow(image.transpose(1, 2, 0) if image.shape[0] == 3 else image[0], cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("input", fontsize=8)
    lo, hi = float(maps.min()), float(maps.max())
    for k, (ax, m) in enumerate(zip(axes[1:], maps)):
        shown = ax.imshow(m, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1)
        ax.set_title(f"channel {k}", fontsize=8)
    fig.colorbar(shown, ax=axes, shrink=0.8, label="activation (one scale for all maps)")
    fig.suptitle(title)
    return fig


def feature_maps(image: np.ndarray, maps: np.ndarray, path: str | Path, title: str) -> Path:
    """Write :func:`feature_maps_figure` to ``path``."""
    return _save(feature_maps_figure(image, maps, title), path)
