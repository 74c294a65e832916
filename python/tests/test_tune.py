"""`deltatune tune`: an Optuna search over methods and settings through the Python module. The command
hands over to `python3 -m deltatune.tune`; a search writes its leaderboard, a best configuration that
`deltatune train --config` runs, the best delta and plots; a rerun continues the study; dev metrics
reach the pruner after each evaluation; K-shot trials score the mean over data seeds; and two workers
share one study in a PostgreSQL server this test starts on loopback and stops."""
import csv
import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile

import pytest

from conftest import BERT, CLI, SENTIMENT, run_cli

optuna = pytest.importorskip("optuna")

PG_BIN = pathlib.Path("/usr/lib/postgresql/15/bin")
SPACE = """\
methods:
  lora:
    lr: {low: 1.0e-3, high: 1.0e-2, log: true}
    r: [2, 4]
  bitfit:
    lr: {low: 1.0e-3, high: 1.0e-2, log: true}
common:
  epochs: 1
"""


def small_task(tmp, train=96, dev=32, test=0):
    """The first reviews of the sentiment task: a trial trains in a few seconds."""
    task = tmp / "task"
    task.mkdir()
    for split, n in (("train", train), ("dev", dev), ("test", test)):
        if not n:
            continue
        lines = open(os.path.join(SENTIMENT, f"{split}.jsonl")).readlines()[:n]
        (task / f"{split}.jsonl").write_text("".join(lines))
    (tmp / "space.yaml").write_text(SPACE)
    return task


def tune(tmp, task, out, *extra):
    return run_cli("tune", "--model", BERT, "--data", task, "--space", tmp / "space.yaml", "--out", out,
                   "--max-length", 32, "--threads", 1, *extra)


def test_search_writes_leaderboard_best_config_delta_and_plots_and_resumes(tmp):
    task = small_task(tmp)
    out = tmp / "run"
    printed = tune(tmp, task, out, "--trials", 3)
    assert "best: trial" in printed
    rows = list(csv.DictReader(open(out / "leaderboard.csv")))
    assert len(rows) == 3 and {r["method"] for r in rows} <= {"lora", "bitfit"}
    assert (out / "leaderboard.md").read_text().count("\n") == 2 + 3
    assert (out / "study.db").exists()
    assert (out / "optimization_history.png").stat().st_size > 1000
    assert (out / "param_importances.png").stat().st_size > 1000
    assert (out / "best" / "delta" / "delta.safetensors").exists()
    best = json.loads((out / "best_delta_config.json").read_text())
    assert best["method"] == rows[0]["method"]
    # The best configuration is one `deltatune train --config` accepts, and trains what it names.
    run_cli("train", "--config", out / "best_config.yaml", "--out", tmp / "again", "--max-steps", 1, "--quiet",
            "--no-test-before")
    again = json.loads((tmp / "again" / "delta" / "delta_config.json").read_text())
    assert again["delta"]["method"] == best["method"]
    # A rerun continues the study (it lives in RUN_DIR/study.db) up to the new total.
    tune(tmp, task, out, "--trials", 4)
    assert len(list(csv.DictReader(open(out / "leaderboard.csv")))) == 4


def test_help_comes_from_the_module():
    done = subprocess.run([CLI, "tune", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--space" in done.stdout and "--storage" in done.stdout


def test_dev_metrics_reach_the_pruner_and_it_stops_trials(tmp):
    from deltatune import tune as dtune
    import deltatune as dt
    task = small_task(tmp)
    args = dtune.parse_args(["--model", BERT, "--data", str(task), "--out", str(tmp / "run"), "--trials", "1",
                             "--max-length", "32", "--threads", "1", "--max-steps", "4"])
    space = dtune.read_space(str(tmp / "space.yaml"))
    space["methods"]["lora"]["epochs"] = 1
    # Every evaluation reported (one per epoch here) is an intermediate value of the trial ...
    study = optuna.create_study(direction="maximize")
    study.optimize(dtune.Objective(args, space, optuna, dt), n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert len(study.trials[0].intermediate_values) >= 1
    # ... and a pruner that finds every value too low stops the trial from the training callback.
    strict = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.1))
    strict.optimize(dtune.Objective(args, space, optuna, dt), n_trials=1)
    assert strict.trials[0].state == optuna.trial.TrialState.PRUNED


def test_k_shot_trials_score_the_mean_over_data_seeds(tmp):
    task = small_task(tmp, test=32)
    out = tmp / "run"
    tune(tmp, task, out, "--trials", 1, "--k-shot", 8, "--data-seeds", 2, "--max-steps", 2)
    study = optuna.load_study(study_name="deltatune", storage=f"sqlite:///{out / 'study.db'}")
    trial = study.trials[0]
    assert len(trial.user_attrs["scores"]) == 2 and len(trial.user_attrs["runs"]) == 2
    assert trial.value == pytest.approx(sum(trial.user_attrs["scores"]) / 2)
    assert "k-shot: 8" in (out / "best_config.yaml").read_text()
    # The test metric is shown beside the dev score (mean ± std over the seeds), never chosen on.
    assert len(trial.user_attrs["test_scores"]) == 2
    assert " ± " in next(csv.DictReader(open(out / "leaderboard.csv", encoding="utf-8")))["test"]


def test_grid_sampler_tries_each_listed_value_once_on_capped_dev_and_test(tmp):
    task = small_task(tmp, test=32)
    (tmp / "grid.yaml").write_text("methods:\n  lora:\n    lr: [1.0e-3, 3.0e-3, 1.0e-2]\n    r: 4\n"
                                   "common:\n  epochs: 1\n")
    out = tmp / "run"
    run_cli("tune", "--model", BERT, "--data", task, "--space", tmp / "grid.yaml", "--out", out,
            "--max-length", 32, "--threads", 1, "--sampler", "grid", "--pruner", "none", "--trials", 10,
            "--k-shot", 16, "--max-dev", 12, "--max-test", 9, "--max-steps", 2)
    study = optuna.load_study(study_name="deltatune", storage=f"sqlite:///{out / 'study.db'}")
    # The grid ends the study when every value has been tried, before --trials.
    assert sorted(t.params["lora.lr"] for t in study.trials) == [1e-3, 3e-3, 1e-2]
    summary = json.loads((pathlib.Path(study.trials[0].user_attrs["runs"][0]) / "summary.json").read_text())
    assert (summary["train_examples"], summary["dev_examples"], summary["test_examples"]) == (16, 12, 9)
    assert "max-dev: 12" in (out / "best_config.yaml").read_text()
    # A range cannot be a grid: a clear error, not a crash.
    done = subprocess.run([CLI, "tune", "--model", BERT, "--data", str(task), "--space", str(tmp / "space.yaml"),
                           "--out", str(tmp / "bad"), "--trials", "1", "--sampler", "grid"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "needs lists of values" in done.stderr and "Traceback" not in done.stderr


def test_full_fine_tuning_is_a_method_of_the_space(tmp):
    task = small_task(tmp)
    (tmp / "full.yaml").write_text("methods:\n  full:\n    lr: [1.0e-4]\ncommon:\n  epochs: 1\n")
    out = tmp / "run"
    run_cli("tune", "--model", BERT, "--data", task, "--space", tmp / "full.yaml", "--out", out, "--max-length", 32,
            "--threads", 1, "--sampler", "grid", "--trials", 1, "--max-steps", 1)
    run = pathlib.Path(next(csv.DictReader(open(out / "leaderboard.csv")))["trial"])
    summary = json.loads((out / "best" / "summary.json").read_text())
    assert summary["method"] == "full" and str(run) == "0"
    assert "method: full" in (out / "best_config.yaml").read_text()
    run_cli("train", "--config", out / "best_config.yaml", "--out", tmp / "again", "--quiet", "--no-test-before")
    assert json.loads((tmp / "again" / "summary.json").read_text())["method"] == "full"
    # Settings of a delta on a method that trains none: a clear error, not a crash.
    (tmp / "bad.yaml").write_text("methods:\n  full:\n    lr: [1.0e-4]\n    r: 8\ncommon:\n  epochs: 1\n")
    done = subprocess.run([CLI, "tune", "--model", BERT, "--data", str(task), "--space", str(tmp / "bad.yaml"),
                           "--out", str(tmp / "bad"), "--trials", "1", "--max-steps", "1", "--max-length", "32"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "trains no delta" in done.stderr and "trials in a row failed" in done.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*command):
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout}{done.stderr}"


@pytest.fixture
def postgres():
    """A PostgreSQL server on loopback in a temporary folder, stopped at the end; its URL."""
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        pytest.skip("PostgreSQL's server binaries are not installed (scripts/setup installs them)")
    home = pathlib.Path(tempfile.mkdtemp(prefix="deltatune_pg_"))
    data = home / "data"
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root: it runs as the postgres account
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(home, user="postgres")
    port = free_port()
    run(*as_user, PG_BIN / "initdb", "-D", data, "-U", "tune", "--auth=trust", "-E", "UTF8")
    run(*as_user, PG_BIN / "pg_ctl", "-D", data, "-l", home / "server.log", "-w", "-o",
        f"-h 127.0.0.1 -p {port} -k {home}", "start")
    try:
        run(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "tune", "study")
        yield f"postgresql://tune@127.0.0.1:{port}/study"
    finally:
        subprocess.run([*as_user, PG_BIN / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_two_workers_share_one_study_in_postgresql(tmp, postgres):
    task = small_task(tmp)
    args = ["tune", "--model", BERT, "--data", task, "--space", tmp / "space.yaml", "--max-length", 32,
            "--threads", 1, "--storage", postgres, "--trials", 4]
    workers = [subprocess.Popen([CLI, *map(str, args), "--out", tmp / f"worker{i}"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    study = optuna.load_study(study_name="deltatune", storage=postgres)
    finished = [t for t in study.trials if t.state.is_finished()]
    # Each worker stops once the study holds 4 finished trials; one may finish the trial it was running.
    assert 4 <= len(finished) <= 5
    # Both workers ran trials of the one study.
    ran = [len(list((tmp / f"worker{i}" / "trials").iterdir())) for i in range(2)]
    assert all(n >= 1 for n in ran) and sum(ran) == len(study.trials)
