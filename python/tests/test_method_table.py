"""scripts/method_table.py, the driver of docs/method_comparison.md's table, on a tiny grid: each cell is a
learning-rate grid study then the chosen rate on the other data seeds; the shared intrinsic subspace is
fitted on the other task's IA3 deltas; the tables, the comparisons and the plot are written, and a rerun
skips finished cells."""
import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("optuna")
pytest.importorskip("matplotlib")

SCRIPT = ROOT / "scripts" / "method_table.py"


def run_table(out, *extra):
    tasks = ",".join(str(ROOT / "assets" / "tasks" / t) for t in ("sentiment", "defmatch"))
    done = subprocess.run([sys.executable, str(SCRIPT), "--tasks", tasks, "--k", "16", "--methods",
                           "ia3,intrinsic-shared", "--seeds", "2", "--epochs", "1", "--patience", "2", "--max-dev",
                           "8", "--max-test", "8", "--max-length", "32", "--out", str(out), *extra],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_tiny_grid_writes_the_table_and_resumes(tmp_path):
    out = tmp_path / "grid"
    run_table(out)
    rows = list(csv.DictReader(open(out / "table.csv")))
    assert {(r["method"], r["task"]) for r in rows} == {(m, t) for m in ("ia3", "intrinsic-shared")
                                                        for t in ("sentiment", "defmatch")}
    assert all(r["seeds"] == "2" for r in rows)
    cell = json.loads((out / "sentiment" / "k16" / "ia3" / "result.json").read_text())
    assert cell["seeds"] == [1, 2] and len(cell["test"]) == 2 and len(cell["lr_grid"]) == 3
    assert cell["lr"] in [float(v) for v in cell["lr_grid"]]
    # The shared subspace of one task comes from the other task's IA3 runs only.
    log = (out / "sentiment" / "k16" / "intrinsic-shared" / "log.txt").read_text()
    fit = next(line for line in log.splitlines() if "subspace fit" in line)
    assert "/defmatch/" in fit and "/sentiment/" not in fit.split("--out")[0]
    table = (out / "table.md").read_text()
    assert "*majority class*" in table and "intrinsic-shared − ia3" in table
    assert (out / "plot_k16.svg").stat().st_size > 1000
    # A rerun finds every cell finished.
    again = run_table(out)
    assert again.stderr.count("done in 0 s") == 4
    # A task added later (here sentiment again, its shared cell removed) fits its subspace from the named
    # tasks' finished IA3 cells under --out (--shared-from), without running them in this grid.
    import shutil
    shutil.rmtree(out / "sentiment" / "k16" / "intrinsic-shared")
    done = subprocess.run([sys.executable, str(SCRIPT), "--tasks", str(ROOT / "assets" / "tasks" / "sentiment"),
                           "--shared-from", str(ROOT / "assets" / "tasks" / "defmatch"), "--k", "16", "--methods",
                           "intrinsic-shared", "--seeds", "2", "--epochs", "1", "--patience", "2", "--max-dev", "8",
                           "--max-test", "8", "--max-length", "32", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "sentiment" / "k16" / "intrinsic-shared" / "result.json").exists()
    log = (out / "sentiment" / "k16" / "intrinsic-shared" / "log.txt").read_text()
    fit = next(line for line in log.splitlines() if "subspace fit" in line)
    assert "/defmatch/" in fit and "/sentiment/" not in fit.split("--out")[0]


def write_result(out, task, k, method, test, lr=2e-3):
    cell = out / task / f"k{k}" / method
    cell.mkdir(parents=True)
    (cell / "result.json").write_text(json.dumps({
        "task": task, "k": k, "method": method, "lr": lr, "test": test, "dev": test,
        "trainable_params": 10, "total_params": 1000, "cell_seconds": 1.0}))


def test_tables_merge_an_earlier_csv_and_mark_missing_cells(tmp_path):
    """--tables-only --with CSV: an earlier table's cells (run folders gone) join this run's result.json
    files, a result.json wins for the same cell, a task missing a cell leaves a dash for the average, and
    the head-only baseline is compared with IA3 instead of being taken for the best single method."""
    out = tmp_path / "grid"
    write_result(out, "spam", 100, "ia3", [0.80, 0.90])
    write_result(out, "spam", 100, "head", [0.70, 0.72])
    write_result(out, "sentiment", 100, "ia3", [0.60, 0.62])  # wins over the CSV's 10.0 below
    earlier = tmp_path / "earlier.csv"
    fields = "k,method,task,test_mean,test_std,seeds,lr,dev_mean,trainable_share,cell_seconds"
    earlier.write_text(fields + "\n" + "\n".join([
        "100,ia3,sentiment,10.0,1.0,5,0.002,10.0,0.01,5.0",
        "100,head,sentiment,55.0,2.0,5,0.006,55.0,0.001,5.0",
        "100,lora,sentiment,58.0,1.5,5,0.002,58.0,0.02,5.0"]) + "\n")
    tasks = ",".join(str(ROOT / "assets" / "tasks" / t) for t in ("sentiment", "spam"))
    done = subprocess.run([sys.executable, str(SCRIPT), "--tasks", tasks, "--out", str(out), "--tables-only",
                           "--with", str(earlier)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    table = (out / "table.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["ia3"].startswith("| ia3 | 61.0 ± 1.4 | 85.0 ± 7.1 | 73.0 |")
    assert rows["head"].startswith("| head | 55.0 ± 2.0 | 71.0 ± 1.4 | 63.0 |")
    assert rows["lora"].startswith("| lora | 58.0 ± 1.5 |  | – |")  # no spam cell: no average
    assert "Best single method by average: **ia3**" in table
    assert rows["ia3 − head"].startswith("| ia3 − head | +6.0 ± ")
    merged = {(r["method"], r["task"]): r for r in csv.DictReader(open(out / "table.csv"))}
    assert merged[("ia3", "sentiment")]["seeds"] == "2" and merged[("lora", "sentiment")]["seeds"] == "5"
    assert (out / "plot_k100.svg").stat().st_size > 1000
    # --k keeps the tables to those K, and the tables may go to a folder of their own.
    write_result(out, "spam", 1000, "ia3", [0.95, 0.96])
    alone = tmp_path / "k100"
    done = subprocess.run([sys.executable, str(SCRIPT), "--tasks", tasks, "--out", str(out), "--tables-only",
                           "--k", "100"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "### K = 100" in done.stdout and "K = 1000" not in done.stdout
    done = subprocess.run([sys.executable, str(SCRIPT), "--tasks", tasks, "--out", str(alone), "--tables-only",
                           "--with", str(earlier)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| lora | 58.0 ± 1.5 |" in (alone / "table.md").read_text()


def test_search_size_grids_the_size_knob_beside_the_rate(tmp_path):
    """--search-size: LoRA's cell grids three ranks x three rates on seed 1, and the chosen rank is the one
    the other seeds train with and the table shows."""
    out = tmp_path / "grid"
    task = str(ROOT / "assets" / "tasks" / "sentiment")
    done = subprocess.run([sys.executable, str(SCRIPT), "--tasks", task, "--k", "16", "--methods", "lora",
                           "--seeds", "2", "--epochs", "1", "--patience", "2", "--max-dev", "8", "--max-test", "8",
                           "--max-length", "32", "--search-size", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    cell = json.loads((out / "sentiment" / "k16" / "lora" / "result.json").read_text())
    assert len(cell["lr_grid"]) == 9 and {key.split(", ")[1] for key in cell["lr_grid"]} == {"r 4", "r 8", "r 16"}
    rank = cell["size"]["r"]
    assert rank in (4, 8, 16)
    seeds_space = json.loads((out / "sentiment" / "k16" / "lora" / "seeds" / "space.json").read_text())
    assert seeds_space["methods"]["lora"]["r"] == rank and seeds_space["methods"]["lora"]["lr"] == cell["lr"]
    assert f"({'r'} {rank})" in (out / "table.md").read_text()


def test_cells_of_an_earlier_table_are_not_run_again(tmp_path):
    """A cell given by --with (finished in an earlier session, its run folder gone) is skipped like a cell
    with a result.json: nothing runs, and the table shows the earlier figures."""
    out = tmp_path / "grid"
    earlier = tmp_path / "earlier.csv"
    earlier.write_text("k,method,task,test_mean,test_std,seeds,lr,dev_mean,trainable_share,cell_seconds\n"
                       "16,ia3,sentiment,61.5,0.5,2,0.002,60.0,0.01,5.0\n")
    done = subprocess.run([sys.executable, str(SCRIPT), "--tasks", str(ROOT / "assets" / "tasks" / "sentiment"),
                           "--k", "16", "--methods", "ia3", "--seeds", "2", "--out", str(out), "--with", str(earlier)],
                          capture_output=True, text=True, env={**os.environ, "DELTATUNE_CLI": "/nonexistent/deltatune"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sentiment K=16 ia3: done in 0 s" in done.stderr
    assert not (out / "sentiment").exists()
    assert "| ia3 | 61.5 ± 0.5 |" in (out / "table.md").read_text()


def test_choose_seeds_scores_each_grid_trial_on_several_seeds(tmp_path):
    """--choose-seeds 2: every learning-rate trial trains on data seeds 1 and 2 and scores their mean dev
    accuracy; only seed 3 runs afterwards, and the cell still has its three runs. Out of range: refused."""
    out = tmp_path / "grid"
    common = [sys.executable, str(SCRIPT), "--tasks", str(ROOT / "assets" / "tasks" / "sentiment"), "--k", "16",
              "--methods", "ia3", "--seeds", "3", "--epochs", "1", "--patience", "2", "--max-dev", "8",
              "--max-test", "8", "--max-length", "32", "--out", str(out)]
    done = subprocess.run(common + ["--choose-seeds", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    cell_dir = out / "sentiment" / "k16" / "ia3"
    cell = json.loads((cell_dir / "result.json").read_text())
    assert cell["seeds"] == [1, 2, 3] and len(cell["test"]) == 3 and len(cell["dev"]) == 3
    trials = [sorted(p.name for p in trial.iterdir()) for trial in (cell_dir / "lr" / "trials").iterdir()]
    assert ["seed1", "seed2"] in trials and all(t[0] == "seed1" for t in trials)  # a pruned trial may stop early
    grid_value = cell["lr_grid"][f"{cell['lr']:g}"]
    assert grid_value == pytest.approx(sum(cell["dev"][:2]) / 2)
    assert [p.name for p in (cell_dir / "seeds" / "trials" / "0000").iterdir()] == ["seed3"]
    refused = subprocess.run(common + ["--choose-seeds", "4"], capture_output=True, text=True)
    assert refused.returncode == 2 and "--choose-seeds 4 must be between 1 and --seeds (3)" in refused.stderr


def test_grid_pruner_none_trains_every_grid_point_to_the_end(tmp_path):
    """--grid-pruner none: the learning-rate study runs without a pruner, so every grid trial completes and
    the grid shows a dev accuracy for each; the default hands tune Hyperband."""
    common = [sys.executable, str(SCRIPT), "--tasks", str(ROOT / "assets" / "tasks" / "sentiment"), "--k", "16",
              "--methods", "ia3", "--seeds", "1", "--epochs", "3", "--patience", "3", "--max-dev", "8",
              "--max-test", "8", "--max-length", "32"]
    for pruner, out in (("none", tmp_path / "none"), (None, tmp_path / "default")):
        done = subprocess.run(common + ["--out", str(out)] + (["--grid-pruner", pruner] if pruner else []),
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        cell_dir = out / "sentiment" / "k16" / "ia3"
        grid_call = next(line for line in (cell_dir / "log.txt").read_text().splitlines()
                         if " tune " in line and "/lr" in line)
        assert f"--pruner {pruner or 'hyperband'}" in grid_call
    cell = json.loads((tmp_path / "none" / "sentiment" / "k16" / "ia3" / "result.json").read_text())
    assert len(cell["lr_grid"]) == 3 and all(isinstance(v, float) for v in cell["lr_grid"].values())
    trials = sorted((tmp_path / "none" / "sentiment" / "k16" / "ia3" / "lr" / "trials").iterdir())
    assert len(trials) == 3
    refused = subprocess.run(common + ["--out", str(tmp_path / "x"), "--grid-pruner", "median"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "--grid-pruner" in refused.stderr
