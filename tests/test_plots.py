"""The training pictures (fastconv.plots) read back from their figures: ticks, titles, sizes, colour scales."""
from __future__ import annotations

import re
import struct

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the plot extra is not installed")

from fastconv import cli, data, plots, train  # noqa: E402

SMALL = ["--train-size", "192", "--test-size", "96", "--batch-size", "32", "--no-progress"]


def _history(epochs: int) -> list[dict]:
    return [{"epoch": e, "train_loss": 1 / e, "test_loss": 1.2 / e, "train_accuracy": 1 - 0.3 / e,
             "test_accuracy": 1 - 0.25 / e} for e in range(1, epochs + 1)]


def _png_size(path) -> tuple[int, int]:
    """(width, height) in pixels, from the PNG's IHDR chunk."""
    return struct.unpack(">II", path.read_bytes()[16:24])


def _visible_ticks(ax) -> list[float]:
    lo, hi = ax.get_xlim()
    return [t for t in ax.get_xticks() if lo <= t <= hi]


def _colorbars(fig) -> list:
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


@pytest.mark.parametrize("epochs", [1, 2, 3, 7])
def test_training_curves_tick_whole_epochs_only(epochs):
    fig = plots.curves_figure(_history(epochs), "lenet5 on mnist: run x")
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = _visible_ticks(ax)
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert fig.get_suptitle() == "lenet5 on mnist: run x"


def test_filters_have_large_tiles_one_scale_and_a_colour_bar(tmp_path):
    weight = np.random.default_rng(0).standard_normal((6, 1, 5, 5))
    weight[2] *= 5  # one strong filter: a shared scale shows it, per-tile scaling would hide it
    fig = plots.filters_figure(weight, "lenet5 conv1")
    fig.canvas.draw()
    tiles = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in tiles] == [f"out {k}" for k in range(6)]
    assert all(ax.get_window_extent().width >= 150 and ax.get_window_extent().height >= 150 for ax in tiles)
    limit = np.abs(weight).max()
    assert {ax.images[0].get_clim() for ax in tiles} == {(-limit, limit)}
    assert len(_colorbars(fig)) == 1 and _colorbars(fig)[0].get_ylabel() == "weight"
    width, height = _png_size(plots.filters(weight, tmp_path / "filters.png"))
    assert width >= 500 and height >= 350


def test_rgb_filters_state_their_shared_scale():
    weight = np.random.default_rng(1).standard_normal((8, 3, 3, 3))
    fig = plots.filters_figure(weight, "cifar_cnn conv1")
    assert "one scale for all filters" in fig.get_suptitle() and f"{weight.max():.3g} -> 1" in fig.get_suptitle()
    assert not _colorbars(fig)
    assert all(ax.images[0].get_array().min() >= 0 and ax.images[0].get_array().max() <= 1
               for ax in fig.axes if ax.images)


def test_feature_maps_share_one_scale_with_a_colour_bar(tmp_path):
    rng = np.random.default_rng(2)
    maps = np.maximum(rng.standard_normal((6, 28, 28)), 0) * np.arange(1, 7)[:, None, None]
    fig = plots.feature_maps_figure(rng.random((1, 28, 28)), maps, "test image 0: label 4, predicted 4 (97.1%)")
    tiles = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in tiles] == ["input"] + [f"channel {k}" for k in range(6)]
    assert {ax.images[0].get_clim() for ax in tiles[1:]} == {(maps.min(), maps.max())}
    assert len(_colorbars(fig)) == 1
    width, height = _png_size(plots.feature_maps(rng.random((1, 28, 28)), maps, tmp_path / "maps.png", "t"))
    assert width >= 600 and height >= 350


def test_grid_leaves_few_empty_tiles():
    assert plots._grid_size(7) == (2, 4)
    assert plots._grid_size(6) == (2, 3)
    assert plots._grid_size(64) == (8, 8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch run, with the titles of the pictures train and visualize drew."""
    titles: dict[str, str] = {}
    real_curves, real_maps = plots.training_curves, plots.feature_maps

    def curves(history, path, title=""):
        titles["curves"] = title
        return real_curves(history, path, title)

    def maps(image, maps_, path, title):
        titles["feature_maps"] = title
        return real_maps(image, maps_, path, title)

    out = tmp_path_factory.mktemp("plots") / "lenet-run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "training_curves", curves)
        patch.setattr(plots, "feature_maps", maps)
        assert cli.main(["train", "--epochs", "1", "--out", str(out), *SMALL]) == 0
        assert cli.main(["visualize", str(out / "checkpoint.npz"), "--index", "5"]) == 0
    return out, titles


def test_training_curves_title_names_model_data_and_run(trained):
    out, titles = trained
    assert re.match(r"lenet5 on mnist \(192 train images\), adam lr 0\.001, batch 32: run lenet-run$",
                    titles["curves"]), titles["curves"]


def test_feature_maps_title_gives_label_and_the_models_prediction(trained):
    out, titles = trained
    run, _ = train.restore(out / "checkpoint.npz")
    x = next(iter(data.DataLoader(run.dataset.test_images[5:6], run.dataset.test_labels[5:6], 1, mean=run.dataset.mean,
                                  std=run.dataset.std, dtype=run.settings["dtype"])))[0]
    probabilities = np.exp(run.model.predict(x)[0])
    probabilities /= probabilities.sum()
    predicted = int(probabilities.argmax())
    label = run.dataset.classes[run.dataset.test_labels[5]]
    expected = (f"lenet5, test image 5: label {label}, predicted {run.dataset.classes[predicted]} "
                f"({probabilities[predicted]:.1%})")
    assert titles["feature_maps"].startswith(expected + "\n"), titles["feature_maps"]
    assert (out / "feature_maps_5.png").is_file() and (out / "filters.png").is_file()
