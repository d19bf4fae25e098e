"""The ``fastconv`` command line: ``demo``, ``train``, ``evaluate``, ``visualize``, ``predict``, ``tune``, ``warmup``,
``bench``, ``report``, ``compare``."""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np

from . import __version__
from .autotune import set_autotune
from .config import set_conv2d_algorithm
from .conv import CONV2D
from .device import CudaUnavailableError
from .runtime import set_num_threads

BENCH_EXTRA = 'the benchmark tools are missing: pip install -e ".[bench]"'


class _ProgressBar:
    """A pytest plugin that advances a tqdm bar (on stderr) as benchmarks finish."""

    def __init__(self, tqdm) -> None:
        self.tqdm = tqdm
        self.bar = None

    def pytest_collection_finish(self, session) -> None:
        self.bar = self.tqdm(total=len(session.items), desc="benchmarks", unit="bench", file=sys.stderr)

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or (report.when == "setup" and report.skipped):
            self.bar.set_postfix_str(report.nodeid.rsplit("::", 1)[-1][:48], refresh=False)
            self.bar.update(1)
            if self.bar.n >= self.bar.total:  # close before pytest prints its summary
                self.bar.close()

    def pytest_sessionfinish(self) -> None:
        if self.bar is not None:
            self.bar.close()


def bench(size: str, dtype: str, out: Path | None, device: str = "cpu", keyword: str | None = None,
          ops: list[str] | None = None, threads: int | None = None, alone: bool = False) -> int:
    """Run the benchmark suite of `device` (cpu, or cuda: the GPU suite, refused with exit 2 where fastconv
    has no GPU), only the records matching pytest's ``-k`` `keyword` and the suites `ops` when given, each
    library with `threads` threads (default: Numba's), with `alone` each group checked against fastconv
    auto, PyTorch and ONNX Runtime timed alone; write results.json, pytest.log, workers.log and the report
    into `out`."""
    try:
        import pytest
        from tqdm import tqdm
    except ImportError:
        print(f"fastconv bench: {BENCH_EXTRA}", file=sys.stderr)
        return 2
    if threads is not None and threads < 1:
        print(f"fastconv bench: --threads must be at least 1, got {threads}", file=sys.stderr)
        return 2
    if device == "cuda":
        from .device import require_cuda
        try:
            require_cuda()
        except CudaUnavailableError as error:
            print(f"fastconv bench: {error}", file=sys.stderr)
            return 2
    from . import benchmarks
    from .benchmarks import report

    tag = size if device == "cpu" else f"{device}-{size}"
    out = out or Path("bench-results") / f"{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.json"
    suite = Path(benchmarks.__file__).parent
    # -o addopts=: not the options of the project's own test suite (its pyproject.toml, found above an editable
    # install's suite), which runs its tests in parallel processes
    args = [str(suite), f"--rootdir={suite}", "-o", "addopts=", "-p", "no:cacheprovider", "-p", "no:benchmark", "-q",
            f"--fc-json={results}", f"--fc-worker-log={out / 'workers.log'}", f"--fc-size={size}",
            f"--fc-dtype={dtype}", f"--fc-device={device}"]
    args += ["-k", keyword] if keyword else []
    args += [f"--fc-op={op}" for op in ops or []]
    args += [f"--fc-threads={threads}"] if threads else []
    args += ["--fc-alone"] if alone else []
    print(f"fastconv bench: {size} {device} suite, {dtype}; pytest output in {out / 'pytest.log'}", file=sys.stderr)
    with open(out / "pytest.log", "w") as log, contextlib.redirect_stdout(log):
        code = pytest.main(args, plugins=[_ProgressBar(tqdm)])
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print(f"fastconv bench: no benchmark matches -k {keyword!r} and --op {ops}", file=sys.stderr)
        return 2
    if code != 0:
        print(f"fastconv bench: the suite failed (pytest exit {int(code)}); see {out / 'pytest.log'}",
              file=sys.stderr)
        return int(code)
    written = report.render(results, out)
    print(f"fastconv bench: wrote {results} and {', '.join(p.name for p in written)}")
    return 0


def _plots():
    try:
        from . import plots
    except ImportError:
        raise SystemExit('fastconv: pictures need matplotlib: pip install -e ".[plot]"') from None
    return plots


def _notes(command: str) -> Callable[[str], None]:
    """A log function printing notes of `command` on stderr."""
    return lambda text: print(f"fastconv {command}: {text}", file=sys.stderr)


def evaluate(checkpoint: Path, out: Path | None, overrides: dict | None = None, progress: bool = True,
             workers: int | None = None, scheduler: str | None = None) -> int:
    """Accuracy, loss and confusion matrix of a checkpoint on its run's test images (``overrides``: settings
    replacing the checkpoint's, such as another ``data_dir`` or ``device``), with a progress bar on stderr.
    With `workers` (a local Dask cluster) or `scheduler` (an existing one) the logits are computed on the
    cluster (``_evaluate_on_cluster``), the rest here."""
    from . import train
    on_cluster = workers is not None or scheduler is not None
    if on_cluster:
        if workers is not None and scheduler is not None:
            raise ValueError("--workers and --scheduler: give one of them (a local cluster, or an existing one's "
                             "address)")
        if (overrides or {}).get("device") == "cuda":
            raise ValueError("--device cuda and --workers/--scheduler: the cluster evaluates on its workers' CPUs")
        from . import distributed
        distributed._require_dask()  # ImportError saying what to install, before the data is loaded
        overrides = {**(overrides or {}), "device": "cpu"}
    run, _ = train.restore(checkpoint, model_only=True, log=_notes("evaluate"), **(overrides or {}))
    if on_cluster:
        result = _evaluate_on_cluster(run, workers, scheduler, progress)
    else:
        result = train.evaluate(run.model, run.test_loader, len(run.dataset.classes), progress=progress)
    confusion, classes = result["confusion"], list(run.dataset.classes)
    print(f"{checkpoint}: {run.settings['model']} on {len(run.dataset.test_labels):,} {run.dataset.name} test "
          f"images: accuracy {result['test_accuracy']:.2%}, loss {result['test_loss']:.4f}")
    width = max(5, *(len(c) for c in classes))
    print("confusion matrix (rows: true class, columns: predicted)")
    print(" " * width + "".join(f"{c[:width]:>{width + 1}}" for c in classes))
    for c, row in zip(classes, confusion):
        print(f"{c:>{width}}" + "".join(f"{v:>{width + 1}}" for v in row))
    out = out or checkpoint.parent
    out.mkdir(parents=True, exist_ok=True)
    np.savetxt(out / "confusion.csv", confusion, fmt="%d", delimiter=",", header=",".join(classes))
    print(f"wrote {out / 'confusion.csv'} and {_plots().confusion_matrix(confusion, classes, out / 'confusion.png')}")
    return 0


def _evaluate_on_cluster(run, workers: int | None, scheduler: str | None, progress: bool) -> dict:
    """``train.evaluate``'s result for a restored run, its logits computed on a Dask cluster by
    ``fastconv.distributed.predict`` (batches of the test loader's size, the last one zero-padded, kernels
    picked by rule), its loss, accuracy and confusion matrix here, batch by batch as ``train.evaluate`` sums
    them (``train.score``): with ``--no-autotune`` the output equals the one-process command's."""
    from . import distributed, train
    loader = run.test_loader
    batches = list(loader)  # the images as the loader normalizes them, in its order
    images, labels = np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])
    with distributed.cluster(workers, scheduler) as client:
        logits = distributed.predict(run.model, distributed.chunked(images, loader.batch_size, client=client),
                                     client=client, batch_size=loader.batch_size)
        logits = distributed.gather(logits, client, progress=progress, desc="evaluate")
    starts = range(0, len(labels), loader.batch_size)
    return train.score(((logits[i:i + loader.batch_size], labels[i:i + loader.batch_size]) for i in starts),
                       len(run.dataset.classes))


def visualize(checkpoint: Path, index: int, out: Path | None, overrides: dict | None = None) -> int:
    """PNGs of the first convolution's filters and of its feature maps (after ReLU) for one test image, titled
    with the image's label and the model's prediction."""
    from . import data, nn, train
    plots = _plots()
    run, _ = train.restore(checkpoint, model_only=True, log=_notes("visualize"),
                           **{**(overrides or {}), "device": "cpu"})
    images = run.dataset.test_images
    if not 0 <= index < len(images):
        raise ValueError(f"--index must be in [0, {len(images)}), got {index}")
    layers = run.model.layers
    first = next(i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2d))
    x = next(iter(data.DataLoader(images[index:index + 1], run.dataset.test_labels[index:index + 1], 1,
                                        mean=run.dataset.mean, std=run.dataset.std, dtype=run.settings["dtype"])))[0]
    run.model.eval()
    maps = nn.Sequential(*layers[:first + 2])(x)[0]
    probabilities = nn.softmax(run.model.predict(x))[0]
    classes, predicted = run.dataset.classes, int(probabilities.argmax())
    label = classes[run.dataset.test_labels[index]]
    model = run.settings["model"]
    out = out or checkpoint.parent
    written = [plots.filters(layers[first].weight.data, out / "filters.png",
                             f"{model}: the {len(maps)} filters of the first convolution"),
               plots.feature_maps(images[index] / 255, maps, out / f"feature_maps_{index}.png",
                                  f"{model}, test image {index}: label {label}, predicted {classes[predicted]} "
                                  f"({probabilities[predicted]:.1%})\nfeature maps of the first convolution, "
                                  "after ReLU")]
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _training_command(args: argparse.Namespace) -> int:
    from . import train
    names = [n for n in train.DEFAULT_SETTINGS if getattr(args, n, None) is not None]
    settings = {n: str(getattr(args, n)) if n == "data_dir" else getattr(args, n) for n in names}
    if args.command == "evaluate":
        try:
            return evaluate(args.checkpoint, args.out, settings, progress=not args.no_progress, workers=args.workers,
                            scheduler=args.scheduler)
        except ImportError as error:  # the distributed extra, for --workers / --scheduler
            print(f"fastconv evaluate: {error}", file=sys.stderr)
            return 2
    if args.command == "visualize":
        return visualize(args.checkpoint, args.index, args.out, settings)
    if args.resume is not None:
        out = args.out or args.resume.parent
    else:
        model, data = settings.get("model", "lenet5"), settings.get("data", "mnist")
        out = args.out or Path("runs") / f"{model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"
    train.train(settings, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    return 0


def _data_options(parser: argparse.ArgumentParser) -> None:
    """The data options of evaluate and visualize: which test images, where the checkpoint's are not wanted."""
    parser.add_argument("--data", choices=["mnist", "cifar10"],
                        help="the data set (default: the checkpoint's; mnist for a checkpoint that names none, as "
                             "fastconv.train.fit's)")
    parser.add_argument("--data-dir", type=Path, help="where the run's data set is now, if it moved")
    parser.add_argument("--train-size", type=int,
                        help="train images, as in fastconv train: the bundled MNIST set's test images are the rest "
                             "(default: the checkpoint's)")
    parser.add_argument("--test-size", type=int, help="test images (default: the checkpoint's)")


def _predict_cluster_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--workers and --scheduler of predict and evaluate: where a Dask cluster runs the model."""
    parser.add_argument("--workers", type=int, metavar="N",
                        help=f"{what} on a local Dask cluster of N worker processes, each with cores/N kernel threads "
                             "(pip install -e '.[distributed]'); the results equal the one-process command's "
                             "(with --no-autotune where the command has it)")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help=f"{what} on the Dask cluster of this scheduler (tcp://HOST:8786) instead")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastconv", description="Convolution engine with compiled kernels.")
    parser.add_argument("--version", action="version", version=f"fastconv {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    threads = argparse.ArgumentParser(add_help=False)  # options shared by the commands that compute
    threads.add_argument("--threads", type=int, metavar="N",
                         help=f"threads of fastconv's kernels, 1 to {numba.config.NUMBA_NUM_THREADS} (default: all, "
                              "Numba's count: the cores, or NUMBA_NUM_THREADS)")
    algorithms = argparse.ArgumentParser(add_help=False)
    names = list(dict.fromkeys(CONV2D.names("cpu") + CONV2D.names("cuda")))
    algorithms.add_argument("--algo", choices=names, metavar="NAME",
                            help="run every convolution (forward and backward) with this conv2d algorithm, one of "
                                 f"{', '.join(names)}, instead of the one measured fastest per layer; a layer it "
                                 "cannot compute stops the command with an error (no fallback)")
    algorithms.add_argument("--no-autotune", action="store_true",
                            help="time no algorithm: each op's rule picks it, and the autotuning cache is neither "
                                 "read nor written")

    demo = commands.add_parser("demo", parents=[threads],
                               help="run every conv2d algorithm on a few layers: agreement and time")
    demo.add_argument("--repeat", type=int, default=5, help="timed runs per algorithm (median reported)")

    tr = commands.add_parser("train", parents=[threads, algorithms],
                             help="train a model; writes history, checkpoint and curves",
                             description="Train a model on MNIST (bundled) or CIFAR-10. Unset options keep their "
                                         "defaults, or the checkpoint's values with --resume.")
    tr.add_argument("--model", choices=["lenet5", "cifar_cnn", "resnet20", "resnext_cifar"], help="default lenet5")
    tr.add_argument("--data", choices=["mnist", "cifar10"], help="default mnist (the bundled 10,000 images)")
    tr.add_argument("--data-dir", help="folder of the MNIST IDX files or of CIFAR-10's binary version")
    tr.add_argument("--train-size", type=int, help="train images (MNIST bundled: first 8000 by default)")
    tr.add_argument("--test-size", type=int, help="test images (default: all the rest / the whole test set)")
    tr.add_argument("--epochs", type=int, help="total epochs, counting resumed ones (default 10)")
    tr.add_argument("--batch-size", type=int, help="default 64")
    tr.add_argument("--optimizer", choices=["adam", "sgd"], help="default adam")
    tr.add_argument("--lr", type=float, help="learning rate (default 1e-3 for adam, 0.01 for sgd)")
    tr.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    tr.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum for SGD")
    tr.add_argument("--weight-decay", type=float, help="L2 penalty added to the gradient (default 0)")
    tr.add_argument("--dropout", type=float, help="dropout probability after the hidden fully connected layers "
                                                  "(before the classifier of ResNets), 0 to 1 (default 0: none)")
    tr.add_argument("--schedule", choices=["none", "step", "cosine"], help="learning-rate schedule per epoch")
    tr.add_argument("--step-size", type=int, help="epochs between x0.1 steps of --schedule step (default 10)")
    tr.add_argument("--augment", action=argparse.BooleanOptionalAction,
                    help="random crops (pad 4) and flips; default on for cifar10, off for mnist")
    tr.add_argument("--seed", type=int, help="initialization, shuffling and augmentation seed (default 0)")
    tr.add_argument("--dtype", choices=["float32", "float64"], help="default float32")
    tr.add_argument("--device", choices=["cpu", "cuda"], help="where to train: cpu (default) or cuda (an NVIDIA "
                    "GPU through numba.cuda: pip install -e '.[cuda]')")
    tr.add_argument("--out", type=Path, help="output folder (default runs/MODEL-DATA-TIMESTAMP; "
                                             "with --resume the checkpoint's folder)")
    tr.add_argument("--resume", type=Path, help="continue the run of this checkpoint.npz")
    tr.add_argument("--overwrite", action="store_true", help="replace the run already in --out (else refused)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bars")

    ev = commands.add_parser("evaluate", parents=[threads, algorithms],
                             help="accuracy and confusion matrix of a checkpoint on its test images")
    ev.add_argument("checkpoint", type=Path, help="the checkpoint.npz of a fastconv train run or of "
                                                  "fastconv.train.fit(..., out_dir=...)")
    _data_options(ev)
    ev.add_argument("--out", type=Path, help="where to write confusion.csv/png (default: the checkpoint's folder)")
    ev.add_argument("--device", choices=["cpu", "cuda"], help="where to evaluate (default: where the run trained)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    _predict_cluster_options(ev, "compute the logits")

    vis = commands.add_parser("visualize", parents=[threads, algorithms],
                              help="pictures of first-layer filters and feature maps of a checkpoint")
    vis.add_argument("checkpoint", type=Path, help="the checkpoint.npz of a fastconv train run or of "
                                                   "fastconv.train.fit(..., out_dir=...)")
    vis.add_argument("--index", type=int, default=0, help="which test image to show feature maps for (default 0)")
    _data_options(vis)
    vis.add_argument("--out", type=Path, help="output folder (default: the checkpoint's folder)")

    pred = commands.add_parser("predict", parents=[threads],
                               help="top-k classes of images by a model (ONNX file or fastconv model/checkpoint)")
    pred.add_argument("model", type=Path, help="an .onnx file, a file of fc.save, or a checkpoint of fastconv train")
    pred.add_argument("input", type=Path, help="an .npy/.npz batch (N, C, H, W) of model-ready numbers, or a folder "
                                               "of PNG/JPEG images (resized and normalized for the model)")
    pred.add_argument("--top-k", type=int, default=5, help="classes per item (default 5)")
    pred.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    pred.add_argument("--out", type=Path, help="the CSV to write (default predictions.csv)")
    pred.add_argument("--key", help="which array of an .npz INPUT (default: its only one)")
    pred.add_argument("--size", help="HxW to resize images to (default: the model's input size)")
    pred.add_argument("--mean", help="per-channel mean subtracted from images scaled to [0, 1], e.g. 0.485,0.456,0.406 "
                                     "(default: a fastconv checkpoint's, else none)")
    pred.add_argument("--std", help="per-channel std dividing them, e.g. 0.229,0.224,0.225 (default: likewise)")
    pred.add_argument("--no-progress", action="store_true", help="no progress bar")
    _predict_cluster_options(pred, "run the model")

    tune = commands.add_parser(
        "tune", help="hyperparameter search on a Dask cluster, Optuna choosing the trials",
        description="Search training settings with Optuna on a Dask cluster (pip install -e '.[distributed]'): each "
                    "trial trains the model and reports its test accuracy after every epoch, so that the pruner stops "
                    "bad trials early. The study lives in a database (OUT/study.db by default): the same command "
                    "again resumes it.")
    tune.add_argument("--model", choices=["lenet5", "cifar_cnn", "resnet20", "resnext_cifar"], default="lenet5",
                      help="default lenet5")
    tune.add_argument("--data", choices=["mnist", "cifar10"], default="mnist",
                      help="default mnist (the bundled 10,000 images)")
    tune.add_argument("--data-dir", help="folder of the MNIST IDX files or of CIFAR-10's binary version")
    tune.add_argument("--train-size", type=int, help="train images per trial (MNIST bundled: first 8000 by default)")
    tune.add_argument("--test-size", type=int, help="test images per trial (default: all the rest)")
    tune.add_argument("--dtype", choices=["float32", "float64"], help="default float32")
    tune.add_argument("--trials", type=int, default=16, help="finished trials (complete or pruned) the study ends "
                                                             "with, counting earlier runs' (default 16)")
    tune.add_argument("--epochs", type=int, default=5, help="epochs of a trial that is not pruned (default 5)")
    tune.add_argument("--space", action="append", metavar="NAME=KIND(ARGS)",
                      help="a setting to search (repeatable): KIND loguniform(LOW,HIGH), uniform(LOW,HIGH), "
                           "int(LOW,HIGH[,STEP]), logint(LOW,HIGH) or choice(A,B,...); NAME one of lr, batch_size, "
                           "optimizer, momentum, nesterov, weight_decay, dropout, schedule, step_size, augment, seed, "
                           "model (default: lr=loguniform(1e-4,1e-1), batch_size=choice(32,64,128), "
                           "optimizer=choice(sgd,adam))")
    tune.add_argument("--set", action="append", metavar="NAME=VALUE",
                      help="a training setting every trial shares (repeatable), e.g. optimizer=sgd or momentum=0.95: "
                           "any NAME of --space but model")
    tune.add_argument("--sampler", choices=["tpe", "random", "grid"], default="tpe",
                      help="tpe (default), random, or grid (every point of choices and integer ranges, in order)")
    tune.add_argument("--pruner", choices=["hyperband", "halving", "median", "none"], default="hyperband",
                      help="hyperband (default), halving (successive halving), median, or none")
    tune.add_argument("--workers", type=int, help="worker processes of a local Dask cluster, each with cores/N kernel "
                                                  "threads (default: one per core, at most 8)")
    tune.add_argument("--scheduler", help="run on the Dask cluster of this scheduler (tcp://HOST:8786) instead")
    tune.add_argument("--storage", help="Optuna storage URL of the study (default sqlite:///OUT/study.db)")
    tune.add_argument("--study-name", help="the study's name in the storage (default MODEL-DATA)")
    tune.add_argument("--out", type=Path, help="output folder (default runs/tune-MODEL-DATA)")
    tune.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    tune.add_argument("--no-progress", action="store_true", help="no progress bar")

    warm = commands.add_parser("warmup", help="compile every CPU kernel ahead of use (cached on disk)")
    warm.add_argument("--dtype", choices=["float32", "float64", "both"], default="both",
                      help="the dtypes to compile for (default both)")
    warm.add_argument("--no-progress", action="store_true", help="no progress bar")

    run = commands.add_parser("bench", help="run the benchmark suite and write results and a report")
    run.add_argument("--quick", action="store_const", const="quick", dest="size",
                     help="a few-minute subset (same as --size quick)")
    run.add_argument("--size", choices=["tiny", "quick", "full"],
                     help="tiny: one small case per op; quick: a subset; full: every case (default)")
    run.set_defaults(size="full")
    run.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                     help="the dtype of every case's arrays (default float32)")
    run.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                     help="cpu: the CPU suite (default); cuda: fastconv's GPU algorithms vs PyTorch (cuDNN, "
                          "cuBLAS) on the GPU")
    run.add_argument("-k", dest="keyword", metavar="EXPR",
                     help="only the benchmarks whose id matches this pytest keyword expression, e.g. "
                          "'resnet and forward' or 'vgg and (auto or pytorch)'")
    run.add_argument("--op", action="append",
                     choices=["conv2d", "max_pool2d", "avg_pool2d", "gemm", "train_step", "models"],
                     help="only this suite (repeatable; models: whole networks against ONNX Runtime)")
    run.add_argument("--threads", type=int, metavar="N",
                     help=f"threads of every library, the same for each, 1 to {numba.config.NUMBA_NUM_THREADS} "
                          "(default: Numba's count, the cores)")
    run.add_argument("--alone", action="store_true",
                     help="also time fastconv auto, PyTorch and ONNX Runtime alone, each in a fresh process, three "
                          "times per case among its rounds, and report the suite/alone ratios (a check; slower)")
    run.add_argument("--out", type=Path, help="output folder (default: bench-results/SIZE-TIMESTAMP, "
                                              "cuda-SIZE-TIMESTAMP for the GPU suite)")

    rep = commands.add_parser("report", help="re-render the report of a results.json")
    rep.add_argument("results", type=Path, help="the results.json of a fastconv bench run")
    rep.add_argument("--out", type=Path, help="output folder (default: the results file's folder)")

    cmp = commands.add_parser("compare", help="compare two results.json; exit 1 on a regression")
    cmp.add_argument("old", type=Path, help="the baseline run's results.json")
    cmp.add_argument("new", type=Path, help="the run to check against it (exit 1 on a regression, 2 when the two "
                                            "runs have no record in common)")
    cmp.add_argument("--threshold", type=float, default=0.25,
                     help="a fastconv time more than this fraction slower is a regression (default 0.25)")
    return parser


def _runtime_options(args: argparse.Namespace) -> None:
    """Apply the command's --threads, --algo and --no-autotune to this process (bench passes --threads to its
    worker processes instead); ValueError naming the flag for a thread count out of range."""
    threads = getattr(args, "threads", None)
    if threads is not None:
        most = numba.config.NUMBA_NUM_THREADS
        if not 1 <= threads <= most:
            raise ValueError(f"--threads must be between 1 and {most}, the threads Numba may start here "
                             f"(NUMBA_NUM_THREADS: the cores by default), got {threads}")
        if args.command != "bench":
            set_num_threads(threads)
    if getattr(args, "algo", None) is not None:
        set_conv2d_algorithm(args.algo)
    if getattr(args, "no_autotune", False):
        set_autotune(False, cache=None)


def _message(error: Exception) -> str:
    """The error's message, a training setting named by its flag (``train.SettingError``)."""
    from .train import SettingError
    if isinstance(error, SettingError):
        return f"--{error.setting.replace('_', '-')} {error.problem}"
    return str(error)


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must be HxW, e.g. 224x224, got {text!r}") from None
    if h < 1 or w < 1 or h * w > 2**26:
        raise ValueError(f"--size must be two sizes of at least 1 (and at most 2**26 pixels), got {text!r}")
    return h, w


def _floats(flag: str, text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} must be numbers separated by commas, got {text!r}") from None
    if flag == "--std" and any(not v > 0 for v in values):
        raise ValueError(f"--std values must be positive, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _runtime_options(args)
    except ValueError as error:
        print(f"fastconv {args.command}: {error}", file=sys.stderr)
        return 2
    if args.command == "demo":
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        from . import demo as demo_module
        demo_module.run(args.repeat)
        return 0
    if args.command == "predict":
        from . import predict
        try:
            return predict.command(args.model, args.input, args.top_k, args.batch_size, args.out, args.key,
                                   _size(args.size), _floats("--mean", args.mean), _floats("--std", args.std),
                                   progress=not args.no_progress, workers=args.workers, scheduler=args.scheduler)
        except (ValueError, FileNotFoundError, ImportError, TypeError) as error:
            print(f"fastconv predict: {error}", file=sys.stderr)
            return 2
    if args.command == "tune":
        from . import tune
        try:
            return tune.command(args)
        except (ValueError, TypeError, ImportError, FileNotFoundError) as error:
            print(f"fastconv tune: {_message(error)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("fastconv tune: interrupted; the same command resumes the study", file=sys.stderr)
            return 130
    if args.command == "warmup":
        from . import warmup
        return warmup.command(args.dtype, progress=not args.no_progress)
    if args.command == "bench":
        return bench(args.size, args.dtype, args.out, args.device, args.keyword, args.op, args.threads, args.alone)
    if args.command in ("train", "evaluate", "visualize"):
        try:
            return _training_command(args)
        except (ValueError, FileNotFoundError, FloatingPointError, CudaUnavailableError, RuntimeError) as error:
            print(f"fastconv {args.command}: {_message(error)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # during training, fit has said what the checkpoint holds
            print(f"fastconv {args.command}: interrupted", file=sys.stderr)
            return 130

    from .benchmarks import report
    for path in [args.results] if args.command == "report" else [args.old, args.new]:
        if not path.is_file():
            parser.error(f"no such results file: {path}")
    try:
        if args.command == "report":
            written = report.render(args.results, args.out or args.results.parent)
            print("wrote " + ", ".join(str(p) for p in written))
            return 0
        if args.threshold <= 0:
            parser.error("--threshold must be positive")
        text, regressions = report.compare(report.load(args.old), report.load(args.new), args.threshold)
    except ValueError as error:
        print(f"fastconv {args.command}: {error}", file=sys.stderr)
        return 2
    print(text)
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
