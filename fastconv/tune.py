"""``fastconv tune`` / ``fc.tune.search``: hyperparameter search over the trainer's settings on a Dask cluster,
with Optuna choosing the trials and stopping bad ones early.

A search is an Optuna study (sampler TPE, random or grid; pruner Hyperband, successive halving, median or none)
kept in a database: ``study.db`` (SQLite) in the search's folder by default, any Optuna storage URL with
`storage`. A trial is a ``fastconv train`` run of the settings the sampler chose for the names of the search
space, the search's fixed settings, and ``train.DEFAULT_SETTINGS`` for the rest.

How it runs: the driver (the calling process) loads the data set once and scatters it to each worker once.
Each epoch of a trial is one Dask task (``run_epoch``), which gets the trial's model, optimizer and schedule
state from the epoch before and hands them on with its test accuracy. The driver reports that accuracy to
Optuna, which prunes the trial or lets it go on. So workers never touch the database (any cluster will do),
only the driver writes the study, trial by trial (completed trials are never lost; running the same search
again resumes it, and trials cut off by the interruption run again with their parameters), and a worker
that dies costs the epoch it was running: Dask runs the task again on another worker, and a trial whose task
keeps failing is marked failed while the study goes on.

Needs the ``distributed`` extra: ``pip install -e ".[distributed]"``.
"""
from __future__ import annotations

import csv
import html
import itertools
import json
import math
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import distributed as dist, models, nn, train

# the training settings a space may search, with the type of their values
SEARCHABLE: dict[str, type] = {
    "model": str, "lr": float, "batch_size": int, "optimizer": str, "momentum": float, "nesterov": bool,
    "weight_decay": float, "dropout": float, "schedule": str, "step_size": int, "augment": bool, "seed": int,
}
# the settings a search fixes for all its trials (the rest of DEFAULT_SETTINGS but the searched ones)
FIXED = ("data_dir", "train_size", "test_size", "dtype", "momentum", "nesterov", "weight_decay", "dropout",
         "schedule", "step_size", "augment", "seed", "batch_size", "optimizer", "lr")
DISTRIBUTIONS = {
    "loguniform": "loguniform(LOW,HIGH): a float, uniform in log scale",
    "uniform": "uniform(LOW,HIGH): a float",
    "int": "int(LOW,HIGH) or int(LOW,HIGH,STEP): an integer, ends included",
    "logint": "logint(LOW,HIGH): an integer, uniform in log scale, ends included",
    "choice": "choice(A,B,...): one of the values",
}
DEFAULT_SPACE = ("lr=loguniform(1e-4,1e-1)", "batch_size=choice(32,64,128)", "optimizer=choice(sgd,adam)")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("hyperband", "halving", "median", "none")
_SPACE_FORM = re.compile(r"^\s*([A-Za-z_][A-Za-z_-]*)\s*=\s*([a-z]+)\s*\((.*)\)\s*$")


class SpaceError(ValueError):
    """A search-space entry (or, `what` 'set', a fixed setting) that cannot be parsed or names a setting that
    cannot take its values."""

    def __init__(self, text: str, problem: str, what: str = "space") -> None:
        self.text, self.problem = text, problem
        super().__init__(f"{what} {text!r}: {problem}")


def _value(name: str, token: str, text: str) -> object:
    """The value `token` (text of the command line) for setting `name`, of that setting's type."""
    kind, token = SEARCHABLE[name], token.strip()
    try:
        if kind is bool:
            if token.lower() not in ("true", "false"):
                raise ValueError
            value: object = token.lower() == "true"
        elif kind is int:
            value = int(token)
        elif kind is float:
            value = float(token)
        else:
            value = token
    except ValueError:
        raise SpaceError(text, f"{name} takes {kind.__name__} values, got {token!r}") from None
    try:
        train.check_settings({name: value})
    except ValueError as error:
        raise SpaceError(text, str(error)) from None
    return value


def parse_fixed(entries: list[str] | tuple[str, ...]) -> dict:
    """Training settings every trial shares, from entries 'NAME=VALUE' ('optimizer=sgd', 'momentum=0.95'): names
    of ``SEARCHABLE`` but model, values checked as ``parse_space`` checks them. Raises SpaceError naming the entry."""
    fixed = {}
    for text in entries:
        name, equals, token = text.partition("=")
        name = name.strip().replace("-", "_")
        if not equals or name not in SEARCHABLE or name == "model":
            names = ", ".join(n for n in SEARCHABLE if n != "model")
            raise SpaceError(text, f"must be NAME=VALUE with NAME one of {names} (the model is --model)", "set")
        try:
            fixed[name] = _value(name, token, text)
        except SpaceError as error:
            raise SpaceError(text, error.problem, "set") from None
    return fixed


def parse_space(entries: list[str] | tuple[str, ...]) -> dict:
    """Optuna distributions by setting name for entries 'NAME=KIND(ARGS)', KIND one of ``DISTRIBUTIONS``:
    'lr=loguniform(1e-4,1e-1)', 'batch_size=choice(32,64,128)', 'optimizer=choice(sgd,adam)', 'momentum=uniform(0.8,
    0.99)', 'step_size=int(2,10)'. Names are the settings of ``SEARCHABLE`` ('-' may stand for '_'); every value
    the distribution can take must pass ``train.check_settings``. Raises SpaceError naming the entry."""
    import optuna.distributions as od
    space: dict = {}
    for text in entries:
        if not isinstance(text, str):
            raise TypeError(f"space entries must be strings such as 'lr=loguniform(1e-4,1e-1)', got {text!r}")
        form = _SPACE_FORM.match(text)
        if form is None:
            raise SpaceError(text, "must be NAME=KIND(ARGS), e.g. lr=loguniform(1e-4,1e-1) or batch_size=choice(32,64)")
        name, kind, args = form.group(1).replace("-", "_"), form.group(2), [a for a in form.group(3).split(",")]
        if name not in SEARCHABLE:
            raise SpaceError(text, f"{name!r} is not a setting a search can vary; these are: {', '.join(SEARCHABLE)}")
        if name in space:
            raise SpaceError(text, f"{name} is given twice")
        if kind not in DISTRIBUTIONS:
            raise SpaceError(text, f"unknown distribution {kind!r}; use one of: {'; '.join(DISTRIBUTIONS.values())}")
        if kind == "choice":
            values = [_value(name, a, text) for a in args]
            if not values or len(set(values)) != len(values):
                raise SpaceError(text, "choice needs one or more different values")
            space[name] = od.CategoricalDistribution(values)
            continue
        if SEARCHABLE[name] not in (int, float) or (kind in ("int", "logint") and SEARCHABLE[name] is not int):
            allowed = "choice" if SEARCHABLE[name] not in (int, float) else "loguniform, uniform or choice"
            raise SpaceError(text, f"{name} takes {SEARCHABLE[name].__name__} values: use {allowed}")
        if len(args) != 2 and not (kind == "int" and len(args) == 3):
            raise SpaceError(text, f"{kind} takes {'2 or 3' if kind == 'int' else 2} numbers, got {len(args)}")
        bounds = [_value(name, a, text) for a in args[:2]]
        low, high = (int(b) for b in bounds) if kind in ("int", "logint") else (float(b) for b in bounds)
        if not low < high:
            raise SpaceError(text, f"needs LOW < HIGH, got {low} and {high}")
        if kind.startswith("log") and low <= 0:
            raise SpaceError(text, f"a log scale needs LOW > 0, got {low}")
        if kind in ("int", "logint"):
            step = int(_value("batch_size", args[2], text)) if len(args) == 3 else 1
            space[name] = od.IntDistribution(low, high, log=kind == "logint", step=step)
        else:
            space[name] = od.FloatDistribution(low, high, log=kind == "loguniform")
    return space


def _grid(space: dict) -> dict[str, list]:
    """Every value of each distribution, for the grid sampler (which takes choices and integer ranges)."""
    import optuna.distributions as od
    grid = {}
    for name, d in space.items():
        if isinstance(d, od.CategoricalDistribution):
            grid[name] = list(d.choices)
        elif isinstance(d, od.IntDistribution) and not d.log:
            grid[name] = list(range(d.low, d.high + 1, d.step))
        else:
            raise ValueError(f"sampler 'grid' needs a finite space: {name} is a continuous or log range; give it as "
                             "choice(...) or int(LOW,HIGH)")
    return grid


def _sampler(name: str, space: dict, seed: int):
    import optuna
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)  # constant_liar: trials run side by side
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":  # the grid's points are queued in the study (_queue_grid); this draws none
        _grid(space)
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")


def _pruner(name: str, epochs: int):
    import optuna
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner must be one of {', '.join(PRUNERS)}, got {name!r}")


def _restored_run(settings: dict, dataset: train.Dataset, state: dict | None) -> train.Run:
    """The run of `settings` on `dataset` with `state` (``run_epoch``'s) restored, or as built for None."""
    run = train.build_run(settings, dataset)
    if state is not None:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        if run.scheduler is not None:
            run.scheduler.load_state_dict(state["scheduler"])
        nn.set_generator_state(state["generator"])  # dropout's masks go on as in one process
    return run


def run_epoch(settings: dict, dataset: train.Dataset, state: dict | None, epoch: int) -> tuple[dict, dict]:
    """One epoch of a trial, on a worker: the run of `settings` built on `dataset`, its state (weights, optimizer,
    schedule, fastconv's generator) restored from the epoch before (`state`, None for the first), trained one
    epoch on the loader's shuffle of `epoch` and tested, as ``train.fit`` does in one process. Returns (the state
    after it, the epoch's history record)."""
    run = _restored_run(settings, dataset, state)
    run.train_loader.epoch = epoch - 1
    lr = run.optimizer.lr
    stats = train.train_epoch(run.model, run.optimizer, run.train_loader, progress=False)
    start = time.perf_counter()
    result = train.evaluate(run.model, run.test_loader, len(dataset.classes))
    if run.scheduler is not None:
        run.scheduler.step()
    record = {"epoch": epoch, "lr": lr, **stats, "test_loss": result["test_loss"],
              "test_accuracy": result["test_accuracy"], "test_seconds": time.perf_counter() - start}
    state = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
             "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
             "generator": nn.generator_state()}
    return state, record


@dataclass
class SearchResult:
    """A finished search: the Optuna study, its trials as table rows, the best trial, the files written."""
    study: object
    rows: list[dict]
    best: dict | None
    out: Path
    written: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def _config(model: str, data: str, epochs: int, space: dict, fixed: dict) -> dict:
    import optuna.distributions as od
    return {"model": model, "data": data, "epochs": epochs, "fixed": fixed,
            "space": {name: od.distribution_to_json(d) for name, d in sorted(space.items())}}


def _open_study(storage: str, name: str, pruner, config: dict):
    """The study `name` in `storage`, created or resumed; ValueError if it was made for another search."""
    import optuna
    study = optuna.create_study(storage=storage, study_name=name, pruner=pruner, direction="maximize",
                                load_if_exists=True)
    saved = study.user_attrs.get("search")
    if saved is None:
        study.set_user_attr("search", config)
    elif saved != config:
        differ = [k for k in config if saved.get(k) != config[k]]
        raise ValueError(f"study {name!r} in {storage} holds a search with other {', '.join(differ)} "
                         f"({', '.join(f'{k}: {json.dumps(saved.get(k))}' for k in differ)}): resume it with the "
                         "same arguments, or start another with another out folder or study name")
    return study


def _queue_grid(study, space: dict) -> None:
    """Every point of the grid the study holds no trial of, queued to run in order (Optuna's GridSampler stops the
    study from its last trial's tell, which only its optimize loop allows)."""
    grid = _grid(space)
    held = {tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False)}
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values))
        if tuple(sorted(params.items())) not in held:
            study.enqueue_trial(params, skip_if_exists=False)


def _requeue_interrupted(study, log) -> None:
    """Trials left running by a search that stopped (the driver killed): failed, and their parameters queued
    to run again first."""
    import optuna
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number}, skip_if_exists=False)
    if stale:
        log(f"{len(stale)} trial(s) cut off by the last interruption run again: {[t.number for t in stale]}")


def search(model: str = "lenet5", data: str = "mnist", *, trials: int = 16, epochs: int = 5,
           space: list[str] | tuple[str, ...] | dict | None = None, settings: dict | None = None,
           sampler: str = "tpe", pruner: str = "hyperband", workers: int | None = None,
           scheduler: str | None = None, client=None, storage: str | None = None, out: str | Path | None = None,
           study_name: str | None = None, seed: int = 0, progress: bool = True, log=print) -> SearchResult:
    """Search the training settings of `space` (entries 'NAME=KIND(ARGS)' of ``parse_space``, or its result;
    default ``DEFAULT_SPACE``) for `model` on `data` until the study holds `trials` finished trials (complete or
    pruned; trials of an earlier run of the same search count), each of at most `epochs` epochs, maximizing the
    test accuracy. `settings`: training settings fixed for every trial (keys of ``FIXED``: train_size,
    data_dir, dtype, ...). `sampler` one of ``SAMPLERS``, `pruner` one of ``PRUNERS``, both seeded by `seed`.

    The trials run on `client`'s cluster, else on one ``distributed.connect(workers, scheduler)`` starts, as many
    at once as the cluster has task slots. The study is `storage` (an Optuna storage URL; default SQLite
    ``OUT/study.db``) under `study_name` (default 'MODEL-DATA'); `out` (default ``runs/tune-MODEL-DATA``) gets
    trials.csv, summary.md/.html, the plots and ``best/checkpoint.npz`` (the best trial's run, which
    ``fastconv evaluate`` reads). Every argument is checked before any work (ValueError naming it)."""
    dist._require_dask()
    try:
        import optuna
    except ImportError:
        raise ImportError(dist.DISTRIBUTED_EXTRA) from None
    if model not in models.MODELS:
        raise ValueError(f"model must be one of {sorted(models.MODELS)}, got {model!r}")
    if data not in ("mnist", "cifar10"):
        raise ValueError(f"data must be 'mnist' or 'cifar10', got {data!r}")
    for name, value in (("trials", trials), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
            raise ValueError(f"{name} must be an integer from 1 to 100000, got {value!r}")
    space = space if isinstance(space, dict) else parse_space(list(DEFAULT_SPACE if space is None else space))
    if not space:
        raise ValueError("space is empty: give at least one NAME=KIND(ARGS)")
    fixed = dict(settings or {})
    wrong = sorted(set(fixed) - set(FIXED)) + sorted(set(fixed) & set(space))
    if wrong:
        raise ValueError(f"settings may fix {', '.join(FIXED)} (not ones the space searches), got {wrong}")
    train.check_settings(fixed)
    _sampler(sampler, space, seed)  # checks the sampler and space before any work
    points = math.prod(len(values) for values in _grid(space).values()) if sampler == "grid" else trials
    if points < trials:
        log(f"the grid has {points} points: running {points} trials, not {trials}")
        trials = points
    pruner_ = _pruner(pruner, epochs)
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise ValueError(f"storage must be an Optuna storage URL such as sqlite:///study.db, got {storage!r}")
    out = Path(out) if out is not None else Path("runs") / f"tune-{model}-{data}"
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    dataset = train.load_dataset(data, fixed.get("data_dir"), fixed.get("train_size"), fixed.get("test_size"))
    base = {**fixed, "model": model, "data": data, "epochs": epochs}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _open_study(storage, study_name or f"{model}-{data}", pruner_, _config(model, data, epochs, space, fixed))
    # seeded past the trials the study holds: a resumed search draws new trials, not the first run's again
    study.sampler = _sampler(sampler, space, seed + len(study.trials))
    _requeue_interrupted(study, log)
    if sampler == "grid":
        _queue_grid(study, space)

    start = time.perf_counter()
    done = _finished(study)[0]
    if done >= trials:
        log(f"the study already holds {done} finished trials (asked for {trials}): nothing to run")
    elif client is not None:
        _drive(study, space, base, dataset, trials, epochs, client, out, progress, log)
    else:
        with dist.cluster(workers, scheduler) as own:
            _drive(study, space, base, dataset, trials, epochs, own, out, progress, log)
    seconds = time.perf_counter() - start
    rows = table(study)
    best = _best(study)
    written = write_summary(study, rows, best, out, seconds)
    return SearchResult(study, rows, best, out, written, seconds)


def _finished(study) -> tuple[int, int]:
    """(complete or pruned trials, failed trials) of the study."""
    import optuna
    states = [t.state for t in study.get_trials(deepcopy=False)]
    done = sum(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states)
    return done, states.count(optuna.trial.TrialState.FAIL)


def _drive(study, space: dict, base: dict, dataset: train.Dataset, trials: int, epochs: int, client, out: Path,
           progress: bool, log) -> None:
    """Run trials on the cluster until the study holds `trials` complete or pruned ones (and stop after as many
    failures in this run)."""
    import optuna
    from distributed import as_completed
    from tqdm import tqdm

    done, _ = _finished(study)
    try:
        client.wait_for_workers(1, timeout=60)
    except TimeoutError:
        raise ValueError(f"the Dask cluster at {client.scheduler.address} has no workers after 60 s: start some with "
                         f"`dask worker {client.scheduler.address}`") from None
    slots = sum(client.nthreads().values())
    log(f"{trials - done} trial(s) to run, {slots} at a time on {len(client.nthreads())} worker(s)")
    shared = client.scatter(dataset, broadcast=True, hash=False)  # each worker gets the data once
    running: dict = {}  # future -> (trial, settings, history)
    pending = as_completed()
    finished, failures, pruned = 0, 0, 0
    best = _best(study)

    def start_trials() -> None:
        live = {id(t) for t, _, _ in running.values()}
        while len(live) < slots and done + finished + len(live) < trials:
            trial = study.ask(space)
            settings = {**base, **trial.params}
            submit(trial, settings, None, [])
            live.add(id(trial))

    def submit(trial, settings: dict, state: dict | None, history: list) -> None:
        future = client.submit(run_epoch, settings, shared, state, len(history) + 1, pure=False,
                               key=f"trial-{trial.number}-epoch-{len(history) + 1}-{time.time_ns()}")
        running[future] = (trial, settings, history)
        pending.add(future)

    bar = tqdm(total=trials - done, desc="trials", unit="trial", file=sys.stderr, disable=not progress)
    try:
        start_trials()
        for future in pending:
            trial, settings, history = running.pop(future)
            try:
                state, record = future.result()
            except Exception as error:  # noqa: BLE001 -- the trial fails, the study goes on
                trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:500])
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                failures += 1
                log(f"trial {trial.number} failed in epoch {len(history) + 1} (another takes its place): "
                    f"{type(error).__name__}: {error}")
            else:
                history = history + [record]
                trial.report(record["test_accuracy"], len(history))
                trial.set_user_attr("history", history)
                if len(history) < epochs and trial.should_prune():
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    pruned += 1
                    finished += 1
                    bar.update(1)
                elif len(history) < epochs:
                    submit(trial, settings, state, history)
                    continue
                else:
                    study.tell(trial, record["test_accuracy"])
                    if best is None or record["test_accuracy"] > best["accuracy"]:
                        _save_best(out, settings, dataset, state, history, trial.number)
                        best = {"accuracy": record["test_accuracy"], "trial": trial.number}
                    finished += 1
                    bar.update(1)
            bar.set_postfix(best=f"{best['accuracy']:.4f}" if best else "-", pruned=pruned, failed=failures,
                            refresh=False)
            if failures >= trials:
                log(f"tune: stopping: {failures} trials failed in this run (see the table's errors)")
                break
            start_trials()
    finally:
        bar.close()
        for future, (trial, _, _) in running.items():  # interrupted: fail them, queue their parameters again
            future.cancel()
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})


def _save_best(out: Path, settings: dict, dataset: train.Dataset, state: dict, history: list, number: int) -> Path:
    """The trial's run as ``fastconv train`` writes it, into OUT/best/checkpoint.npz."""
    run = _restored_run(settings, dataset, state)
    (out / "best").mkdir(exist_ok=True)
    meta = {**run.meta, "epochs_done": len(history), "history": history, "trial": number}
    return train.save_checkpoint(out / "best" / "checkpoint.npz", run.model, run.optimizer, run.scheduler, meta)


def _best(study) -> dict | None:
    import optuna
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return None
    t = max(complete, key=lambda t: (t.value, -t.number))
    return {"trial": t.number, "accuracy": t.value, "params": t.params}


def table(study) -> list[dict]:
    """One row per trial: number, parameters, test accuracy after each epoch, state, seconds, error."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        history = t.user_attrs.get("history") or []
        seconds = sum(r["train_seconds"] + r["test_seconds"] for r in history)
        rows.append({"trial": t.number, "params": dict(t.params),
                     "accuracy": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
                     "state": t.state.name.lower(), "seconds": seconds, "error": t.user_attrs.get("error", "")})
    return rows


def _format(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The table's head and one list of cells per row: trial, each parameter, accuracy per epoch, state, seconds."""
    names = sorted({n for r in rows for n in r["params"]})
    head = ["trial", *names, "accuracy per epoch", "state", "seconds"]
    return head, [[str(r["trial"]), *(_format(r["params"].get(n, "")) for n in names),
                   " ".join(f"{a:.3f}" for a in r["accuracy"]), r["state"], f"{r['seconds']:.1f}"] for r in rows]


def format_table(rows: list[dict]) -> str:
    """The trials as a text table."""
    head, body = _cells(rows)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in [head, *body]]
    return "\n".join(lines)


def _plots(study, out: Path) -> list[Path]:
    """Optimization history, parameter importances and parallel coordinates as PNGs (those the study has
    enough trials for; none without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ovm
    except ImportError:
        return []
    written = []
    import optuna

    def importances(study):  # PED-ANOVA: no scikit-learn needed (fANOVA, Optuna's default before 4, needs it)
        return ovm.plot_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                                          target_name="test accuracy")
    for name, plot in (("history", lambda s: ovm.plot_optimization_history(s, target_name="test accuracy")),
                       ("importances", importances),
                       ("parallel", lambda s: ovm.plot_parallel_coordinate(s, target_name="test accuracy"))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError):  # too few complete trials for this plot
                continue
        figure = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        figure.savefig(out / f"{name}.png", dpi=100)
        plt.close(figure)
        written.append(out / f"{name}.png")
    return written


def write_summary(study, rows: list[dict], best: dict | None, out: Path, seconds: float) -> list[Path]:
    """trials.csv, summary.md and summary.html (table, best parameters, plots) in `out`."""
    names = sorted({n for r in rows for n in r["params"]})
    epochs = max((len(r["accuracy"]) for r in rows), default=0)
    with open(out / "trials.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", *names, *(f"accuracy_epoch_{e + 1}" for e in range(epochs)), "state", "seconds",
                         "error"])
        for r in rows:
            writer.writerow([r["trial"], *(r["params"].get(n, "") for n in names),
                             *(r["accuracy"] + [""] * (epochs - len(r["accuracy"]))), r["state"],
                             f"{r['seconds']:.2f}", r["error"]])
    plots = _plots(study, out)
    states = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail")}
    search = study.user_attrs.get("search", {})
    lines = [f"# Hyperparameter search: {search.get('model')} on {search.get('data')}", "",
             f"{len(rows)} trials ({states['complete']} complete, {states['pruned']} pruned, {states['fail']} failed), "
             f"at most {search.get('epochs')} epochs each; this run took {seconds:.0f} s.", ""]
    if best:
        lines += [f"Best: trial {best['trial']}, test accuracy {best['accuracy']:.4f}, "
                  + ", ".join(f"{k}={_format(v)}" for k, v in best["params"].items())
                  + " (its run: `best/checkpoint.npz`)", ""]
    head, body = _cells(rows)
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    head_html = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body_html = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body)
    text = "".join(f"<p>{html.escape(line)}</p>" for line in lines[2:5] if line)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(lines[0][2:])}</title>"
            "<style>body{font-family:sans-serif} td,th{padding:2px 8px;text-align:right}</style></head><body>"
            f"<h1>{html.escape(lines[0][2:])}</h1>{text}<table><tr>{head_html}</tr>{body_html}</table>"
            + "".join(f"<p><img src='{p.name}' alt='{p.stem}'></p>" for p in plots) + "</body></html>")
    (out / "summary.html").write_text(page)
    return [out / "trials.csv", out / "summary.md", out / "summary.html", *plots]


def command(args) -> int:
    """``fastconv tune``: the search of the command line's arguments; prints the table and the best trial."""
    fixed = {name: getattr(args, name) for name in ("data_dir", "train_size", "test_size", "dtype")
             if getattr(args, name, None) is not None}
    fixed.update(parse_fixed(args.set or []))
    if "data_dir" in fixed:
        fixed["data_dir"] = str(fixed["data_dir"])
    result = search(args.model, args.data, trials=args.trials, epochs=args.epochs,
                    space=args.space or None, settings=fixed, sampler=args.sampler, pruner=args.pruner,
                    workers=args.workers, scheduler=args.scheduler, storage=args.storage, out=args.out,
                    study_name=args.study_name, seed=args.seed, progress=not args.no_progress,
                    log=lambda text: print(f"fastconv tune: {text}", file=sys.stderr))
    print(format_table(result.rows))
    if result.best:
        b = result.best
        print(f"best: trial {b['trial']}, test accuracy {b['accuracy']:.4f}: "
              + ", ".join(f"{k}={_format(v)}" for k, v in b["params"].items()))
    print(f"wrote {', '.join(str(p) for p in result.written)}"
          + (f" and {result.out / 'best' / 'checkpoint.npz'}" if result.best else "")
          + f" ({result.seconds:.0f} s)")
    return 0
