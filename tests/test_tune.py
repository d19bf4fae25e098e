"""fastconv.tune: hyperparameter search on a local Dask cluster of 2 worker processes, Optuna choosing trials.
Tiny trials (LeNet-5 on a few hundred bundled MNIST images); skipped without the distributed extra."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("distributed")
optuna = pytest.importorskip("optuna")

from fastconv import distributed as dist, train, tune  # noqa: E402

TINY = {"train_size": 240, "test_size": 120}
SPACE = ["lr=loguniform(1e-3,1e-2)", "batch_size=choice(32,64)", "optimizer=choice(sgd,adam)"]


@pytest.fixture(scope="module")
def client():
    environ = dict(os.environ)
    c = dist.connect(2)
    c.driver_environ = environ, dict(os.environ)
    yield c
    cluster = c.cluster
    c.close()
    cluster.close()
    os.environ.clear()  # a nanny restarting the killed worker writes its variables into this process's environment
    os.environ.update(environ)


def _search(client, out, **kw):
    args = dict(trials=4, epochs=2, space=SPACE, settings=TINY, client=client, out=out, progress=False,
                log=lambda text: None)
    return tune.search(**{**args, **kw})


def test_local_workers_share_out_the_cores_and_leave_the_drivers_environment(client):
    def worker_state():
        import numba
        return numba.get_num_threads(), os.environ.get("MALLOC_TRIM_THRESHOLD_")
    assert set(client.run(worker_state).values()) == {(dist.local_threads(2), None)}
    before, after = client.driver_environ
    assert before == after


def test_space_parses_into_optuna_distributions():
    space = tune.parse_space(["lr=loguniform(1e-4,1e-1)", "batch-size=choice(32,64)", "nesterov=choice(true,false)",
                              "momentum=uniform(0.5,0.99)", "step_size=int(2,10,2)", "optimizer=choice(sgd,adam)"])
    assert space["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert space["batch_size"].choices == (32, 64)
    assert space["nesterov"].choices == (True, False)
    assert space["step_size"] == optuna.distributions.IntDistribution(2, 10, step=2)
    assert tune._grid({k: space[k] for k in ("batch_size", "step_size")}) == {"batch_size": [32, 64],
                                                                              "step_size": [2, 4, 6, 8, 10]}


@pytest.mark.parametrize("entry, message", [
    ("lr", "must be NAME=KIND"), ("lr=gauss(1,2)", "unknown distribution 'gauss'"),
    ("epochs=int(1,5)", "'epochs' is not a setting a search can vary"), ("lr=loguniform(0,1)", "LOW > 0"),
    ("lr=uniform(0.1,0.01)", "LOW < HIGH"), ("batch_size=choice(32,big)", "batch_size takes int values"),
    ("batch_size=choice(0,32)", "batch_size"), ("optimizer=choice(sgd,lbfgs)", "optimizer"),
    ("optimizer=uniform(0,1)", "use choice"), ("lr=int(1,2)", "takes float values"),
    ("lr=uniform(-1,1)", "lr"), ("batch_size=choice(32,32)", "different values")])
def test_a_space_that_cannot_be_parsed_names_the_entry(entry, message):
    with pytest.raises(ValueError, match="space") as caught:
        tune.parse_space([entry])
    assert message in str(caught.value) and entry in str(caught.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"model": "alexnet"}, "model must be one of"), ({"data": "imagenet"}, "data must be"),
    ({"trials": 0}, "trials must be"), ({"sampler": "cmaes"}, "sampler must be"), ({"pruner": "x"}, "pruner must be"),
    ({"sampler": "grid"}, "needs a finite space"), ({"settings": {"epochs": 3}}, "settings may fix"),
    ({"settings": {"train_size": 0}}, "train_size"), ({"storage": "study.db"}, "storage URL"),
    ({"settings": {"lr": 0.1}}, "settings may fix")])
def test_bad_arguments_fail_before_any_work(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _search(None, tmp_path / "out", **kwargs)  # no client: one would only be started after the checks
    assert not (tmp_path / "out" / "study.db").exists()


def test_a_search_runs_trials_writes_its_summary_and_the_best_run(client, tmp_path):
    result = _search(client, tmp_path, pruner="none")
    assert [r["state"] for r in result.rows] == ["complete"] * 4
    assert all(len(r["accuracy"]) == 2 and r["seconds"] > 0 for r in result.rows)
    best = max(result.rows, key=lambda r: r["accuracy"][-1])
    assert result.best["accuracy"] == best["accuracy"][-1]
    for name in ("trials.csv", "summary.md", "summary.html", "history.png"):
        assert (tmp_path / name).is_file()
    assert f"trial {result.best['trial']}" in (tmp_path / "summary.md").read_text()
    # the best trial's run, as fastconv train writes it: evaluating it gives the trial's accuracy
    run, history = train.restore(tmp_path / "best" / "checkpoint.npz", model_only=True)
    assert run.settings["lr"] == best["params"]["lr"] and len(history) == 2
    assert train.evaluate(run.model, run.test_loader, 10)["test_accuracy"] == best["accuracy"][-1]
    # a trial is the run fastconv train makes of its settings: the same epochs in one process agree
    settings = {"model": "lenet5", "data": "mnist", "epochs": 2, **TINY, **best["params"]}
    local = train.build_run(settings)
    fit = train.fit(local.model, local.optimizer, local.train_loader, local.test_loader, 2, progress=False,
                    log=lambda text: None)
    assert np.allclose([r["test_accuracy"] for r in fit], best["accuracy"], atol=0.02)


def test_the_grid_sampler_runs_each_point_once(client, tmp_path):
    result = _search(client, tmp_path, trials=10, epochs=1, sampler="grid",
                     space=["batch_size=choice(32,64)", "optimizer=choice(sgd,adam)"])
    assert sorted(tuple(sorted(r["params"].items())) for r in result.rows) == sorted(
        (("batch_size", b), ("optimizer", o)) for b in (32, 64) for o in ("sgd", "adam"))


def test_the_same_search_again_resumes_the_study(client, tmp_path):
    first = _search(client, tmp_path, trials=3)
    again = _search(client, tmp_path, trials=5)
    assert again.rows[:3] == first.rows
    assert sum(r["state"] in ("complete", "pruned") for r in again.rows) == 5
    assert {tuple(sorted(r["params"].items())) for r in again.rows[3:]}.isdisjoint(
        {tuple(sorted(r["params"].items())) for r in first.rows})  # new draws, not the first run's again
    with pytest.raises(ValueError, match="other epochs"):
        _search(client, tmp_path, trials=5, epochs=3)


def test_trials_cut_off_by_an_interruption_run_again(client, tmp_path):
    _search(client, tmp_path, trials=1)
    study = optuna.load_study(study_name="lenet5-mnist", storage=f"sqlite:///{tmp_path / 'study.db'}")
    cut = study.ask(tune.parse_space(SPACE))  # as a driver killed mid-trial leaves it: running
    result = _search(client, tmp_path, trials=2)
    states = {r["trial"]: r for r in result.rows}
    assert states[cut.number]["state"] == "fail"
    rerun = [r for r in result.rows if r["trial"] > cut.number]
    assert rerun and rerun[0]["params"] == cut.params and rerun[0]["state"] in ("complete", "pruned")


def test_a_worker_killed_mid_trial_leaves_the_study_going(client, tmp_path):
    pids = client.run(os.getpid)
    result, errors = [], []

    def run():
        try:
            result.append(_search(client, tmp_path, trials=3, epochs=3, pruner="none",
                                  settings={"train_size": 600, "test_size": 200}))
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        busy = [address for address, keys in client.processing().items() if any("epoch-2" in k for k in keys)]
        if busy:
            os.kill(pids[busy[0]], signal.SIGKILL)  # a worker process dies in the middle of a trial's epoch
            break
        time.sleep(0.05)
    else:
        pytest.fail("no trial reached its second epoch")
    thread.join(180)
    assert not errors, errors
    rows = result[0].rows
    finished = [r for r in rows if r["state"] == "complete"]
    assert len(finished) == 3 and all(len(r["accuracy"]) == 3 for r in finished)  # the epoch ran again elsewhere
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it
    assert set(client.run(os.getpid).values()) != set(pids.values())


def test_tune_command_line(tmp_path):
    env = {**os.environ, "FASTCONV_COMPILE_NOTICE": "0"}
    command = [sys.executable, "-m", "fastconv", "tune", "--trials", "2", "--epochs", "1", "--train-size", "200",
               "--test-size", "100", "--workers", "1", "--out", str(tmp_path), "--no-progress",
               "--set", "optimizer=sgd",
               "--space", "lr=loguniform(1e-3,1e-2)", "--space", "dropout=uniform(0,0.5)"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "best: trial" in done.stdout and (tmp_path / "best" / "checkpoint.npz").is_file()
    bad = subprocess.run(command + ["--space", "lr=uniform(1,2,3)"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "space 'lr=uniform(1,2,3)'" in bad.stderr
    bad = subprocess.run(command + ["--set", "momentum=fast"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "set 'momentum=fast': momentum takes float values" in bad.stderr


def test_fixed_settings_parse_and_are_checked():
    assert tune.parse_fixed(["optimizer=sgd", "momentum=0.95", "nesterov=true"]) == {
        "optimizer": "sgd", "momentum": 0.95, "nesterov": True}
    for entry in ("model=resnet20", "optimizer", "epochs=3", "dropout=1.5"):
        with pytest.raises(ValueError, match=f"set '{entry}'"):
            tune.parse_fixed([entry])


@pytest.mark.parametrize("kwargs, message", [
    ({"workers": 0}, "workers must be an integer from 1 to 256"), ({"workers": True}, "workers must be"),
    ({"workers": 2.0}, "workers must be"), ({"workers": 2, "scheduler": "tcp://h:8786"}, "not both"),
    ({"scheduler": " "}, "scheduler must be an address")])
def test_connect_refuses_bad_arguments_before_starting_anything(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dist.connect(**kwargs)


def test_dropout_is_a_checked_training_setting():
    import fastconv as fc
    assert sum(isinstance(m, fc.nn.Dropout) for m in fc.models.lenet5(dropout=0.3).modules()) == 2
    assert not any(isinstance(m, fc.nn.Dropout) for m in fc.models.lenet5().modules())
    with pytest.raises(ValueError, match="dropout"):
        train.check_settings({"dropout": 1.0})
    with pytest.raises(ValueError, match="dropout probability"):
        fc.models.resnet20(dropout=-0.1)
