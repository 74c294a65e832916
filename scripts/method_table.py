#!/usr/bin/python3
"""The method comparison with learning rates chosen on dev (docs/method_comparison.md, issue 18's table).

    /usr/bin/python3 scripts/method_table.py --model assets/models/bert-mini \
        --tasks runs/tasks/sentiment,runs/tasks/defmatch,runs/tasks/supersense --k 100 --seeds 5 \
        --workers 2 --out runs/honest

Each cell (task, K, method) is two `deltatune tune` studies, the same budget for every method:
  1. lr/: Optuna's grid over the method's learning rates (three, half a decade apart, around the
     method table's default), data seed 1, Hyperband pruning on the dev accuracy after every epoch;
  2. seeds/: the chosen rate again on data seeds 2..S (no pruning); with the chosen trial's seed 1
     these are the cell's S runs. Only dev chooses; the test accuracy is read, never used to choose.
With --choose-seeds N each grid trial of step 1 trains on data seeds 1..N and scores their mean dev
accuracy (one seed's dev picks noise from a large grid: docs/method_comparison.md, the size knob);
step 2 then runs seeds N+1..S.
With --grid-pruner none every trial of step 1 trains to the end (Hyperband, the default, favours the
grid's first points in a small grid: docs/method_comparison.md, the size knob).
With --search-size the grid of step 1 also covers the method's main size knob (SIZE_KNOBS: LoRA's rank,
the adapters' reduction factor, the number of prefix or prompt tokens), three values: nine trials.
Every run: K training examples drawn with the seed, dev = the next --max-dev, up to --epochs epochs
with early stopping after --patience evaluations without improvement, the best dev weights tested.

`intrinsic` tunes d = 250 coordinates of a random Fastfood subspace of IA3's scales; `intrinsic-shared`
tunes the coordinates of a PCA subspace of the IA3 deltas trained on the *other* tasks (every IA3 run of
the other tasks at the same K: at most runs - 1 directions, capped at 250), so its cells run after the
IA3 cells. IA3, because its delta starts at the same point (scales of 1) whatever the seed: a PCA of
LoRA's factors would mostly find the seeds' random initialisations of A, not what training learned.
`head` trains the classification head alone (a linear probe; every other method trains it too): the
baseline row, left out of the best single method and compared with IA3 and the intrinsic methods.
A finished cell (result.json, or a row of a --with table) is skipped: rerun to resume.
OUT/table.md, table.csv and plot_k*.svg are rebuilt from every result.json at the end (--tables-only:
only that), with the cells of earlier table.csv files given with --with (a result.json wins).
"""
import argparse
import csv
import json
import math
import os
import pathlib
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLI = os.environ.get("DELTATUNE_CLI", str(ROOT / "build" / "deltatune"))

# Each method's delta (the method table's settings unless given) and its learning-rate grid: three rates
# half a decade apart around the table's default (full 1e-4, deltas 2e-3, intrinsic 3e-2), prompt
# tuning's a step higher as its literature uses.
DELTA_RATES = [6e-4, 2e-3, 6e-3]
METHODS = {
    # The baseline every method includes: the classification head alone (a linear probe), rates around 5e-3.
    "head": ({}, [2e-3, 6e-3, 2e-2]),
    "full": ({}, [3e-5, 1e-4, 3e-4]),
    "bitfit": ({}, DELTA_RATES),
    "houlsby": ({}, DELTA_RATES),
    "pfeiffer": ({}, DELTA_RATES),
    "prefix": ({}, DELTA_RATES),
    "prompt": ({}, [2e-3, 6e-3, 2e-2]),
    "lora": ({}, DELTA_RATES),
    "ia3": ({}, DELTA_RATES),
    "unipelt-ap": ({}, DELTA_RATES),
    "unipelt-apl": ({}, DELTA_RATES),
    "intrinsic": ({"dim": 250, "delta": {"fixed": {"method": "ia3"}}}, [1e-2, 3e-2, 1e-1]),
    "intrinsic-shared": (None, [1e-2, 3e-2, 1e-1]),  # the subspace folder is filled in per task
}
# Each method's main size knob and the values --search-size grids over beside the learning rates (the
# method table's default in the middle). Methods without one (full, head, BitFit, IA3) and the composite
# or fixed-size ones (UniPELT, intrinsic at d = 250) keep a grid of rates alone.
SIZE_KNOBS = {
    "houlsby": ("reduction_factor", [8, 16, 32]),
    "pfeiffer": ("reduction_factor", [8, 16, 32]),
    "prefix": ("num_virtual_tokens", [5, 10, 20]),
    "prompt": ("num_virtual_tokens", [4, 8, 16]),
    "lora": ("r", [4, 8, 16]),
}
SHARED_FROM = "ia3"  # the method whose deltas on other tasks span the shared subspace (intrinsic's inner delta)
MAX_SHARED_DIM = 250


def run(command, log):
    """Runs a command, its output appended to `log`; raises with the log's tail when it fails."""
    with open(log, "a") as out:
        out.write("$ " + " ".join(map(str, command)) + "\n")
        out.flush()
        done = subprocess.run([str(c) for c in command], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = pathlib.Path(log).read_text().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(map(str, command[:2]))} failed ({done.returncode}):\n" + "\n".join(tail))


def load_trials(study_dir):
    """The trials of a tune study folder, from its SQLite storage."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="deltatune", storage=f"sqlite:///{study_dir / 'study.db'}")
    return study.get_trials(deepcopy=False)


class Grid:
    def __init__(self, args, earlier=()):
        self.args = args
        # Cells of the --with tables are finished (their run folders gone, e.g. on another machine).
        self.finished_before = {(r["task"], r["k"], r["method"]) for r in earlier}
        self.out = pathlib.Path(args.out)
        self.tasks = [pathlib.Path(t) for t in args.tasks.split(",")]
        self.ks = [int(k) for k in (args.k or "100").split(",")]
        self.methods = args.methods.split(",")
        # The tasks whose IA3 runs span the shared subspace (their cells under --out): --tasks unless given.
        self.shared_from = [pathlib.Path(t) for t in args.shared_from.split(",")] if args.shared_from else []
        self.epochs = {int(k): int(e) for k, e in (p.split(":") for p in args.k_epochs.split(","))} \
            if args.k_epochs else {}
        self.done = {}  # (task, k, method) -> threading.Event
        for task in self.tasks:
            for k in self.ks:
                for method in self.methods:
                    self.done[(task.name, k, method)] = threading.Event()

    def cell_dir(self, task, k, method):
        return self.out / task.name / f"k{k}" / method

    def tune(self, task, k, space, study_dir, extra, log):
        study_dir.mkdir(parents=True, exist_ok=True)
        (study_dir / "space.json").write_text(json.dumps(space, indent=2) + "\n")
        a = self.args
        run([CLI, "tune", "--model", a.model, "--data", task, "--space", study_dir / "space.json",
             "--out", study_dir, "--k-shot", k, "--max-dev", a.max_dev, "--max-test", a.max_test,
             "--patience", a.patience, "--max-length", a.max_length, "--threads", a.threads,
             "--sampler", "grid", *extra], log)

    def space(self, task, k, method, lr, size=None):
        """The tune space of a cell: the learning rate(s) and, where searched, the size knob's value(s)."""
        settings, _ = METHODS[method]
        if method == "intrinsic-shared":
            settings = {"subspace": {"fixed": str(self.subspace(task, k).resolve())}}
            name = "intrinsic"
        else:
            name = method
        entry = dict(settings)
        entry["lr"] = lr
        if size is not None:
            entry[SIZE_KNOBS[method][0]] = size  # a list: one of the grid's axes; a value: fixed
        return {"methods": {name: entry}, "common": {"epochs": self.epochs.get(k, self.args.epochs)}}

    def subspace(self, task, k):
        """The PCA subspace of the SHARED_FROM deltas trained on the other tasks at this K."""
        folder = self.cell_dir(task, k, "intrinsic-shared") / "subspace"
        if (folder / "subspace.json").exists():
            return folder
        deltas = []
        for other in self.shared_from or self.tasks:
            if other.name == task.name:
                continue
            if (other.name, k, SHARED_FROM) in self.done:  # a cell of this grid: wait until it is finished
                self.done[(other.name, k, SHARED_FROM)].wait()
            trials = self.cell_dir(other, k, SHARED_FROM)
            deltas += sorted(p for p in trials.glob("*/trials/*/seed*/delta") if (p / "delta_config.json").exists())
        if len(deltas) < 3:
            raise RuntimeError(f"the shared subspace for {task.name} needs {SHARED_FROM} deltas of other tasks "
                               f"(found {len(deltas)})")
        dim = min(MAX_SHARED_DIM, len(deltas) - 1)
        run([CLI, "subspace", "fit", "--deltas", *deltas, "--dim", dim, "--out", folder, "--overwrite"],
            self.cell_dir(task, k, "intrinsic-shared") / "log.txt")
        return folder

    def run_cell(self, task, k, method):
        cell = self.cell_dir(task, k, method)
        result_file = cell / "result.json"
        if result_file.exists() or (task.name, k, method) in self.finished_before:
            return
        cell.mkdir(parents=True, exist_ok=True)
        log = cell / "log.txt"
        started = time.time()
        _, rates = METHODS[method]
        knob, sizes = SIZE_KNOBS[method] if self.args.search_size and method in SIZE_KNOBS else (None, None)
        # 1. The learning rate (and with --search-size the size knob): a grid on data seeds 1..N (N = 1 by
        #    default), pruned on dev by --grid-pruner (Hyperband unless none).
        choose = self.args.choose_seeds
        self.tune(task, k, self.space(task, k, method, rates, sizes), cell / "lr",
                  ["--trials", len(rates) * len(sizes or [None]), "--data-seeds", choose,
                   "--pruner", self.args.grid_pruner], log)
        import optuna
        lr_trials = load_trials(cell / "lr")
        complete = [t for t in lr_trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            raise RuntimeError(f"{cell}: no learning rate completed")
        best = max(complete, key=lambda t: (t.value, -t.number))
        lr = next(v for name, v in best.params.items() if name.endswith(".lr"))
        size = next(v for name, v in best.params.items() if name.endswith("." + knob)) if knob else None
        # 2. The chosen rate (and size) on the other data seeds.
        seeds = list(range(choose + 1, self.args.seeds + 1))
        dev, test = list(best.user_attrs["scores"]), list(best.user_attrs.get("test_scores", []))
        runs = list(best.user_attrs["runs"])
        if seeds:
            seed_args = ["--data-seeds", ",".join(map(str, seeds))] if len(seeds) > 1 else ["--seed", seeds[0]]
            self.tune(task, k, self.space(task, k, method, lr, size), cell / "seeds",
                      ["--trials", 1, "--pruner", "none", *seed_args], log)
            again = [t for t in load_trials(cell / "seeds") if t.state == optuna.trial.TrialState.COMPLETE][0]
            dev += again.user_attrs["scores"]
            test += again.user_attrs.get("test_scores", [])
            runs += again.user_attrs["runs"]
        summaries = [json.loads((pathlib.Path(r) / "summary.json").read_text()) for r in runs]
        result = {
            "task": task.name, "k": k, "method": method, "lr": lr,
            "lr_grid": {grid_point(t.params): (t.value if t.state == optuna.trial.TrialState.COMPLETE
                                                 else t.state.name.lower()) for t in lr_trials},
            "seeds": list(range(1, self.args.seeds + 1)), "dev": dev, "test": test,
            "updates": [s["steps"] for s in summaries],
            "trainable_params": summaries[0]["trainable_params"], "total_params": summaries[0]["total_params"],
            "train_seconds": [s["train_seconds"] for s in summaries],
            "cell_seconds": round(time.time() - started, 1),
        }
        if knob:
            result["size"] = {knob: size}
        result_file.write_text(json.dumps(result, indent=2) + "\n")

    def run_all(self):
        # IA3 first (the shared subspace needs it), the shared intrinsic cells last; the rest between.
        order = sorted(self.done, key=lambda c: (c[2] != SHARED_FROM, c[2] == "intrinsic-shared",
                                                 self.ks.index(c[1]), self.methods.index(c[2]), c[0]))
        by_name = {t.name: t for t in self.tasks}
        queue, lock, failures = list(order), threading.Lock(), []
        total = len(queue)

        def worker():
            while True:
                with lock:
                    if not queue:
                        return
                    name, k, method = queue.pop(0)
                    position = total - len(queue)
                t0 = time.time()
                try:
                    self.run_cell(by_name[name], k, method)
                    state = "done"
                except Exception as e:  # one cell failing must not stop the grid; reported at the end
                    failures.append(f"{name} K={k} {method}: {e}")
                    state = "FAILED"
                finally:
                    self.done[(name, k, method)].set()
                print(f"[{position}/{total}] {name} K={k} {method}: {state} in {time.time() - t0:.0f} s",
                      file=sys.stderr, flush=True)

        threads = [threading.Thread(target=worker) for _ in range(self.args.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return failures


def number(value, spec):
    """A table's number; a dash where a task's cell is missing (an average over the tasks then is too)."""
    return "–" if math.isnan(value) else format(value, spec)


def grid_point(params):
    """A grid trial's name in result.json: its learning rate, and its size knob where one was searched."""
    lr = next(v for name, v in params.items() if name.endswith(".lr"))
    others = [f"{name.split('.', 1)[1]} {v}" for name, v in sorted(params.items())
              if "." in name and not name.endswith(".lr")]
    return ", ".join([str(lr), *others])


def mean_std(values):
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def majority_share(task_dir, max_test):
    """The share of the most frequent label among the test examples scored (the majority-class baseline)."""
    split = task_dir / "test.jsonl"
    if not split.exists():
        return math.nan
    labels = [json.loads(line)["label"] for line in split.read_text().splitlines()[:max_test or None] if line]
    names = [str(v) for v in labels]
    return max(names.count(v) for v in set(names)) / len(names) if names else math.nan


def reading(k, tasks, methods, cells):
    """The comparisons the table is for: UniPELT against the best single method, and the intrinsic
    methods against IA3 (their inner delta), each difference beside its standard error over the seeds."""
    def stats(m, t):
        r = cells.get((t, k, m))
        if not r:
            return None
        return r["mean"], r["std"], r["n"]

    def diff(a, b, t):
        sa, sb = stats(a, t), stats(b, t)
        if not sa or not sb:
            return ""
        d = sa[0] - sb[0]
        se = math.sqrt(sa[1] ** 2 / sa[2] + sb[1] ** 2 / sb[2])
        flag = "" if abs(d) > 2 * se else " (within 2 SE)"
        return f"{d:+.1f} ± {se:.1f}{flag}"

    def avg(m):
        values = [stats(m, t) for t in tasks]
        return sum(v[0] for v in values) / len(values) if all(values) else math.nan

    singles = [m for m in methods if not m.startswith("unipelt") and m != "head" and not math.isnan(avg(m))]
    lines = []
    if singles:
        best = max(singles, key=avg)
        lines.append(f"Best single method by average: **{best}** ({avg(best):.1f}). Differences in test accuracy "
                     "points per task, ± their standard error over the seeds (SE = sqrt(s1²/n1 + s2²/n2)):")
        lines.append("")
        lines.append("| comparison | " + " | ".join(tasks) + " | avg |")
        lines.append("|---|" + "---:|" * (len(tasks) + 1))
        pairs = [(u, best) for u in ("unipelt-ap", "unipelt-apl") if u in methods]
        pairs += [(i, "ia3") for i in ("intrinsic", "intrinsic-shared") if i in methods and "ia3" in methods]
        # What the subspace adds over the head it trains with (the head alone is the baseline row).
        pairs += [(i, "head") for i in ("ia3", "intrinsic", "intrinsic-shared") if i in methods and "head" in methods]
        for a, b in pairs:
            lines.append(f"| {a} − {b} | " + " | ".join(diff(a, b, t) for t in tasks) +
                         f" | {number(avg(a) - avg(b), '+.1f')} |")
        lines.append("")
    return lines


def cell_record(r):
    """A finished cell (its result.json) as the tables use it: test accuracy in %, mean and spread."""
    mean, std = mean_std([100 * v for v in r["test"]])
    return {"task": r["task"], "k": r["k"], "method": r["method"], "mean": mean, "std": std, "n": len(r["test"]),
            "lr": r["lr"], "dev_mean": 100 * mean_std(r["dev"])[0],
            "share": r["trainable_params"] / r["total_params"], "cell_seconds": r["cell_seconds"],
            "size": " ".join(f"{knob} {v}" for knob, v in r.get("size", {}).items())}


def csv_records(path):
    """The cells of an earlier table.csv (--with): runs whose folders are no longer at hand."""
    with open(path, newline="") as f:
        return [{"task": row["task"], "k": int(row["k"]), "method": row["method"],
                 "mean": float(row["test_mean"]), "std": float(row["test_std"]), "n": int(row["seeds"]),
                 "lr": float(row["lr"]), "dev_mean": float(row["dev_mean"]),
                 "share": float(row["trainable_share"]), "cell_seconds": float(row["cell_seconds"]),
                 "size": row.get("size", "")}
                for row in csv.DictReader(f)]


def write_tables(out, methods, task_dirs=(), max_test=0, earlier=(), ks=None):
    records = [*earlier, *(cell_record(json.loads(p.read_text())) for p in sorted(out.glob("*/k*/*/result.json")))]
    records = [r for r in records if ks is None or r["k"] in ks]
    if not records:
        print("no finished cells yet", file=sys.stderr)
        return
    out.mkdir(parents=True, exist_ok=True)  # --tables-only --with into a folder of its own
    tasks = sorted({r["task"] for r in records})
    ks = sorted({r["k"] for r in records})
    cells = {(r["task"], r["k"], r["method"]): r for r in records}  # a cell's result.json wins over --with
    dirs = {pathlib.Path(d).name: pathlib.Path(d) for d in task_dirs}
    chosen = "learning rates (sizes)" if any(r["size"] for r in records) else "learning rates"
    lines, rows = [], []
    for k in ks:
        present = [m for m in methods if any((t, k, m) in cells for t in tasks)]
        lines += [f"### K = {k}", "",
                  "| method | " + " | ".join(tasks) + f" | avg | chosen {chosen} (column order) | trainable |",
                  "|---|" + "---:|" * (len(tasks) + 3)]
        if dirs:
            shares = [100 * majority_share(dirs[t], max_test) if t in dirs else math.nan for t in tasks]
            lines.append("| *majority class* | " + " | ".join(f"*{v:.1f}*" for v in shares) +
                         f" | *{sum(shares) / len(shares):.1f}* | | |")
        averages = {}
        for m in present:
            means, parts, rates = [], [], []
            for t in tasks:
                r = cells.get((t, k, m))
                if not r:
                    parts.append("")
                    continue
                mean, std = r["mean"], r["std"]
                means.append(mean)
                parts.append(f"{mean:.1f} ± {std:.1f}")
                rates.append(f"{r['lr']:g}" + (f" ({r['size']})" if r["size"] else ""))
                rows.append({"k": k, "method": m, "task": t, "test_mean": round(mean, 4), "test_std": round(std, 4),
                             "seeds": r["n"], "lr": r["lr"], "dev_mean": round(r["dev_mean"], 2),
                             "trainable_share": round(r["share"], 7), "size": r["size"],
                             "cell_seconds": r["cell_seconds"]})
            avg = sum(means) / len(means) if len(means) == len(tasks) else math.nan
            averages[m] = avg
            share = next((cells[(t, k, m)]["share"]
                          for t in tasks if (t, k, m) in cells), math.nan)
            lines.append(f"| {m} | " + " | ".join(parts) + f" | {number(avg, '.1f')} | {', '.join(rates)} | {100 * share:.2f}% |")
        lines.append("")
        lines += reading(k, tasks, present, cells)
        write_plot(out, k, tasks, present, cells)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("\n".join(lines))


def write_plot(out, k, tasks, methods, cells):
    """plot_k{K}.svg: test accuracy per method and task, mean with the seed spread as error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # Only the tasks with a finished cell at this K (a task still running at one K has none yet).
    tasks = [t for t in tasks if any((t, k, m) in cells for m in methods)]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(1, len(tasks))
    for i, t in enumerate(tasks):
        means, stds = [], []
        for m in methods:
            r = cells.get((t, k, m))
            mean, std = (r["mean"], r["std"]) if r else (math.nan, 0.0)
            means.append(mean)
            stds.append(std)
        xs = [j + (i - (len(tasks) - 1) / 2) * width for j in range(len(methods))]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=t)
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"bert-mini, K = {k}: mean and std over data seeds, learning rate chosen on dev")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"plot_k{k}.svg")
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default=str(ROOT / "assets" / "models" / "bert-mini"))
    p.add_argument("--tasks", required=True, help="Task folders, comma-separated")
    p.add_argument("--k", help="K-shot sizes, comma-separated (default 100); the tables then show only these")
    p.add_argument("--methods", default=",".join(METHODS), help="Methods, comma-separated (default: all)")
    p.add_argument("--seeds", type=int, default=5, help="Data seeds per cell (1..S)")
    p.add_argument("--epochs", type=int, default=50, help="Most epochs per run")
    p.add_argument("--k-epochs", help="K:EPOCHS for particular K, comma-separated (e.g. 1000:10)")
    p.add_argument("--patience", type=int, default=10, help="Evaluations (epochs) without improvement")
    p.add_argument("--max-dev", type=int, default=200)
    p.add_argument("--max-test", type=int, default=1000)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="Threads per run")
    p.add_argument("--search-size", action="store_true",
                   help="Grid each method's main size knob (SIZE_KNOBS) beside its learning rates")
    p.add_argument("--choose-seeds", type=int, default=1, metavar="N",
                   help="Data seeds 1..N each grid trial trains on, its score their mean dev accuracy (default 1: "
                        "seed 1 alone chooses, as the committed tables); the cell's other seeds then run")
    p.add_argument("--grid-pruner", choices=["hyperband", "none"], default="hyperband",
                   help="The grid study's pruner (default hyperband, as the committed tables). Optuna's Hyperband "
                        "promotes a trial at a rung only past the best trials before it there, so in a small grid it "
                        "prunes the late grid points most; none: every grid point trains to the end")
    p.add_argument("--workers", type=int, default=1, help="Cells run side by side")
    p.add_argument("--shared-from", metavar="TASKS",
                   help="Task folders whose finished IA3 cells (under --out) span intrinsic-shared's subspace, "
                        "comma-separated (default: the other --tasks); a task's own cells never count")
    p.add_argument("--out", required=True)
    p.add_argument("--tables-only", action="store_true", help="Only rebuild OUT's tables and plots")
    p.add_argument("--with", dest="earlier", action="append", default=[], metavar="CSV",
                   help="An earlier table.csv whose cells join the tables and are not run again (their run folders "
                        "gone); repeatable")
    args = p.parse_args()
    if not 1 <= args.choose_seeds <= args.seeds:
        p.error(f"--choose-seeds {args.choose_seeds} must be between 1 and --seeds ({args.seeds})")
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)} (known: {', '.join(METHODS)})")
    if "intrinsic-shared" in args.methods.split(",") and SHARED_FROM not in args.methods.split(",") \
            and not args.shared_from:
        p.error(f"intrinsic-shared needs {SHARED_FROM} in --methods, or --shared-from (its subspace is fitted on "
                f"those deltas)")
    out = pathlib.Path(args.out)
    failures = []
    earlier = [r for path in args.earlier for r in csv_records(path)]
    if not args.tables_only:
        started = time.time()
        failures = Grid(args, earlier).run_all()
        print(f"grid finished in {time.time() - started:.0f} s", file=sys.stderr)
    ks = {int(k) for k in args.k.split(",")} if args.k else None
    write_tables(out, args.methods.split(","), args.tasks.split(","), args.max_test, earlier, ks)
    for f in failures:
        print("FAILED:", f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
