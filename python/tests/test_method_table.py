"""scripts/method_table.py, the driver of docs/method_comparison.md's table, on a tiny grid: each cell is a
learning-rate grid study then the chosen rate on the other data seeds; the shared intrinsic subspace is
fitted on the other task's IA3 deltas; the tables, the comparisons and the plot are written, and a rerun
skips finished cells."""
import csv
import json
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
