"""The same training run in PyTorch, for comparison with ``fastconv train``.

    python -m fastconv.benchmarks.train_peer --model lenet5 --data mnist --epochs 10 --out runs/lenet5-torch

Builds the run exactly as ``fastconv train`` does with the same options (data split, loaders with the
same seed, so the same batches in the same order; the same initial weights), then trains the PyTorch
twin of the model (``peers.torch_twin``) with ``torch.optim``'s optimizer of the same settings, on
Numba's thread count. fastconv runs no kernel in this process; PyTorch shares its OpenMP runtime (see
``fastconv/runtime.py``), which fastconv keeps at one level of parallelism. Prints and writes (``history.json``) the same per-epoch record as fastconv.
Only the optimizers and schedules the trainer offers are mirrored: Adam, SGD, step and cosine.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from fastconv import runtime, train

from .peers import torch_twin


def _torch_optimizer(torch, run: train.Run, params):
    s = run.settings
    if s["optimizer"] == "adam":
        opt = torch.optim.Adam(params, lr=s["lr"], weight_decay=s["weight_decay"])
    else:
        opt = torch.optim.SGD(params, lr=s["lr"], momentum=s["momentum"], nesterov=s["nesterov"],
                              weight_decay=s["weight_decay"])
    schedules = {"none": lambda: None, "step": lambda: torch.optim.lr_scheduler.StepLR(opt, s["step_size"]),
                 "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, s["epochs"])}
    return opt, schedules[s["schedule"]]()


def fit_torch(settings: dict, log=print) -> list[dict]:
    """Train the PyTorch twin of ``train.build_run(settings)`` and return its per-epoch history."""
    import torch
    torch.set_num_threads(runtime.num_threads())
    run = train.build_run(settings)
    model = torch_twin(run.model)
    opt, scheduler = _torch_optimizer(torch, run, model.parameters())
    history = []
    for epoch in range(1, run.settings["epochs"] + 1):
        model.train()
        lr = opt.param_groups[0]["lr"]
        loss_sum, correct, seen = 0.0, 0, 0
        start = time.perf_counter()
        for x, y in run.train_loader:
            xt, yt = torch.from_numpy(x), torch.from_numpy(y)
            opt.zero_grad()
            logits = model(xt)
            loss = torch.nn.functional.cross_entropy(logits, yt)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == yt).sum())
            seen += len(y)
        seconds = time.perf_counter() - start
        model.eval()
        start = time.perf_counter()
        test_loss, test_correct = 0.0, 0
        with torch.no_grad():
            for x, y in run.test_loader:
                logits = model(torch.from_numpy(x))
                test_loss += torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).item() * len(y)
                test_correct += int((logits.argmax(1).numpy() == y).sum())
        n_test = run.test_loader.num_examples
        history.append({"epoch": epoch, "lr": lr, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                        "train_seconds": seconds, "images_per_second": seen / seconds,
                        "test_loss": test_loss / n_test, "test_accuracy": test_correct / n_test,
                        "test_seconds": time.perf_counter() - start})
        if scheduler is not None:
            scheduler.step()
        h = history[-1]
        log(f"pytorch epoch {epoch}/{run.settings['epochs']}: train loss {h['train_loss']:.4f} "
            f"acc {h['train_accuracy']:.4f} | test loss {h['test_loss']:.4f} acc {h['test_accuracy']:.4f} | "
            f"{h['train_seconds']:.1f} s, {h['images_per_second']:,.0f} img/s")
    return history


PROG = "python -m fastconv.benchmarks.train_peer"


def main(argv: list[str] | None = None) -> int:
    """The command line; exit status 2, saying how to install it, where PyTorch is missing."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    for name in ("model", "data", "data_dir", "optimizer", "schedule", "dtype"):
        parser.add_argument("--" + name.replace("_", "-"))
    for name in ("train_size", "test_size", "epochs", "batch_size", "seed", "step_size"):
        parser.add_argument("--" + name.replace("_", "-"), type=int)
    for name in ("lr", "momentum", "weight_decay"):
        parser.add_argument("--" + name.replace("_", "-"), type=float)
    parser.add_argument("--out", type=Path, help="folder for history.json")
    args = vars(parser.parse_args(argv))
    try:
        importlib.import_module("torch")
    except ImportError:
        print(f"{PROG}: PyTorch is not installed; it is an optional peer of fastconv, needed here: "
              "pip install torch==2.13.0 (the CPU build)", file=sys.stderr)
        return 2
    out = args.pop("out")
    history = fit_torch({k: v for k, v in args.items() if v is not None})
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    rates = [h["images_per_second"] for h in history]
    print(f"pytorch: final test accuracy {history[-1]['test_accuracy']:.4f}, median {np.median(rates):,.0f} img/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
