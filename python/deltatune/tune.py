"""``deltatune tune``: choosing the delta method and its hyperparameters with Optuna.

    deltatune tune --model assets/models/bert-mini --data assets/tasks/sentiment --trials 20 --out runs/tune
    python3 -m deltatune.tune ...   (the same; the command hands over to this module)

Each trial picks a method (a categorical choice) and that method's settings from the search space,
trains with ``deltatune.train`` (the library's workflow, the one ``deltatune train`` runs) and scores
the best dev metric; with ``--k-shot K --data-seeds S`` it trains once per data seed on K examples per
class (the UniPELT protocol) and scores their mean. Optuna's TPE sampler proposes, its pruner (Hyperband
or successive halving) stops trials whose dev metric, reported after every evaluation through the
training callback, trails. The study lives in RUN_DIR/study.db (SQLite), so a rerun continues it; with
``--storage postgresql://...`` several processes or machines work on one study. ``--trials N`` is the
study's total of finished trials, whoever ran them.

RUN_DIR then holds leaderboard.md and leaderboard.csv, best_config.yaml (``deltatune train --config
best_config.yaml --out DIR`` repeats the best trial) with best_delta_config.json, best/ (the best trial's
run: delta/, summary.json, ...), optimization_history.png and param_importances.png, and trials/ (one
run folder per trial and data seed).
"""
import argparse
import csv
import json
import math
import os
import pathlib
import random
import shutil
import sys
import time

# Options a search space entry sets on the training run; every other entry is a delta config field.
TRAIN_KEYS = ("lr", "epochs", "warmup_ratio", "weight_decay", "batch_size", "max_length")
# What `deltatune train --config` calls them.
FLAG_NAMES = {"lr": "lr", "epochs": "epochs", "warmup_ratio": "warmup-ratio", "weight_decay": "weight-decay",
              "batch_size": "batch-size", "max_length": "max-length"}
LOWER_IS_BETTER = ("loss", "perplexity")
# Methods that train the model's own weights rather than a delta (train's --method full / head): a
# space may name them beside the delta methods, as the UniPELT tables compare with full fine-tuning.
WHOLE_MODEL_METHODS = ("full", "head")

# The default space: the methods people choose among, each with its learning rate range (log scale) and
# its main size knob; epochs, warmup and weight decay shared. A space file has the same shape.
DEFAULT_SPACE = {
    "methods": {
        "lora": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "r": [4, 8, 16], "alpha": [8, 16, 32],
                 "dropout": {"low": 0.0, "high": 0.2}},
        "adapter": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "bottleneck": [16, 32, 64]},
        "prefix": {"lr": {"low": 1e-3, "high": 3e-2, "log": True}, "num_virtual_tokens": [5, 10, 20]},
        "prompt": {"lr": {"low": 1e-3, "high": 1e-1, "log": True}, "num_virtual_tokens": [5, 10, 20]},
        "bitfit": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}},
        "ia3": {"lr": {"low": 1e-3, "high": 3e-2, "log": True}},
        "unipelt": {"lr": {"low": 1e-4, "high": 5e-3, "log": True}, "variant": ["AP", "APL"]},
        "intrinsic": {"lr": {"low": 1e-2, "high": 1e-1, "log": True}, "dim": [100, 250, 500],
                      "delta": {"fixed": {"method": "lora", "r": 8}}},
    },
    "common": {"epochs": {"low": 1, "high": 5}, "warmup_ratio": {"low": 0.0, "high": 0.1},
               "weight_decay": {"low": 0.0, "high": 0.1}},
}


def read_space(path):
    """The search space: DEFAULT_SPACE, or a YAML/JSON file of the same shape. An entry is a fixed value
    (a scalar, or {"fixed": value} for a list or object), a list of choices (categorical), or a range
    {"low", "high", "log": bool, "step": n} (integers when low and high are)."""
    if not path:
        return DEFAULT_SPACE
    try:
        text = pathlib.Path(path).read_text()
    except OSError as e:
        raise SystemExit(f"deltatune: {path}: cannot read the search space ({e.strerror})")
    try:
        if str(path).endswith(".json"):
            space = json.loads(text)
        else:  # YAML (a JSON text is YAML too)
            import yaml
            space = yaml.safe_load(text)
    except Exception as e:  # json's ValueError, yaml's YAMLError (not a ValueError)
        raise SystemExit(f"deltatune: {path}: not a valid search space file: {e}")
    if not isinstance(space, dict) or not isinstance(space.get("methods"), dict) or not space["methods"]:
        raise SystemExit(f"deltatune: {path}: a search space needs 'methods', a map of method name to its ranges")
    for method, entries in space["methods"].items():
        if entries is not None and not isinstance(entries, dict):
            raise SystemExit(f"deltatune: {path}: methods.{method} must be a map of settings to ranges")
    space.setdefault("common", {})
    return space


def suggest(trial, name, spec):
    """One setting of a trial: fixed, categorical or a (log) range."""
    if isinstance(spec, dict) and "fixed" in spec:
        return spec["fixed"]
    if isinstance(spec, list):
        return trial.suggest_categorical(name, spec)
    if isinstance(spec, dict) and "low" in spec and "high" in spec:
        low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
        if isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool):
            return trial.suggest_int(name, low, high, log=log, step=int(spec.get("step", 1)))
        return trial.suggest_float(name, float(low), float(high), log=log)
    return spec


def trial_settings(trial, space):
    """(method, delta config, training options) of a trial."""
    method = trial.suggest_categorical("method", sorted(space["methods"]))
    entries = dict(space.get("common") or {})
    entries.update(space["methods"][method] or {})
    delta, train = {"method": method}, {}
    for key, spec in entries.items():
        value = suggest(trial, key if key in (space.get("common") or {}) else f"{method}.{key}", spec)
        (train if key in TRAIN_KEYS else delta)[key] = value
    return method, delta, train


def grid_space(space):
    """The grid of `--sampler grid`: every list of the space (and the method choice) under the names
    trial_settings suggests them by. Optuna's grid is the product of all of them, so with several methods
    list the choices of one method at a time, or settings of another method multiply the trials."""
    grid = {"method": sorted(space["methods"])}
    common = space.get("common") or {}
    for method in grid["method"]:
        entries = dict(common)
        entries.update(space["methods"][method] or {})
        for key, spec in entries.items():
            name = key if key in common else f"{method}.{key}"
            if isinstance(spec, list):
                grid[name] = spec
            elif isinstance(spec, dict) and "low" in spec and "high" in spec:
                raise SystemExit(f"deltatune tune: --sampler grid needs lists of values; '{name}' is a range "
                                 f"(give it as a list, e.g. [{spec['low']}, {spec['high']}])")
    return grid


def data_seeds(args):
    """The data seeds a trial trains with: one run (the --seed) unless --k-shot asks for several."""
    if not args.data_seeds:
        return [args.seed]
    if "," in args.data_seeds:
        return [int(s) for s in args.data_seeds.split(",")]
    return list(range(1, int(args.data_seeds) + 1))


class Objective:
    """Trains one trial's settings (once per data seed) and returns the mean best dev metric."""

    def __init__(self, args, space, optuna, dt):
        self.args, self.space, self.optuna, self.dt = args, space, optuna, dt
        self.out = pathlib.Path(args.out)

    def __call__(self, trial):
        try:
            return self.run_trial(trial)
        except self.dt.ConfigError as e:
            # Settings the library refuses fail this trial (a NaN score is Optuna's failed trial) and the
            # search goes on: one line saying why, not a traceback.
            print(f"deltatune tune: trial {trial.number} failed: {e}", file=sys.stderr)
            trial.set_user_attr("error", str(e))
            return math.nan

    def run_trial(self, trial):
        method, delta, train = trial_settings(trial, self.space)
        trial.set_user_attr("delta_config", delta)
        trial.set_user_attr("train_options", train)
        scores, tests, runs, evaluations = [], [], [], [0]
        for seed in data_seeds(self.args):
            run_dir = self.out / "trials" / f"{trial.number:04d}" / f"seed{seed}"
            if run_dir.exists():
                shutil.rmtree(run_dir)  # a trial number is reused only after its worker died
            result = self.train_once(trial, delta, train, seed, run_dir, evaluations)
            dev = result.dev or {}
            if self.args.metric not in dev:
                raise ValueError(f"the dev metrics {sorted(dev)} have no '{self.args.metric}' (--metric)")
            scores.append(float(dev[self.args.metric]))
            if isinstance(result.test, dict) and self.args.metric in result.test:
                tests.append(float(result.test[self.args.metric]))
            runs.append(str(run_dir))
        trial.set_user_attr("scores", scores)
        trial.set_user_attr("runs", runs)
        if tests:  # reported beside the dev score, never used to choose
            trial.set_user_attr("test_scores", tests)
        mean = sum(scores) / len(scores)
        if len(scores) > 1:
            trial.set_user_attr("std", math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)))
        return mean

    def train_once(self, trial, delta, train, seed, run_dir, evaluations):
        dt, optuna, metric = self.dt, self.optuna, self.args.metric

        def report(event):
            # After every dev evaluation: the pruner compares this trial with the others at the same
            # evaluation count (counted across the data seeds) and may stop it.
            if event.get("event") != "eval" or metric not in (event.get("metrics") or {}):
                return
            evaluations[0] += 1
            trial.report(float(event["metrics"][metric]), evaluations[0])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at evaluation {evaluations[0]}")

        model = dt.load_model(self.args.model, task=self.args.task)
        options = dict(train)
        if delta["method"] in WHOLE_MODEL_METHODS:
            if len(delta) > 1:
                raise dt.ConfigError(f"methods.{delta['method']} trains no delta: its settings can only be "
                                     f"{', '.join(TRAIN_KEYS)}, not {sorted(set(delta) - {'method'})}")
            options["method"] = delta["method"]
        else:
            dt.attach(model, delta)
        options.setdefault("batch_size", self.args.batch_size)
        if self.args.max_length:
            options.setdefault("max_length", self.args.max_length)
        if self.args.k_shot:
            options["k_shot"] = self.args.k_shot
        if self.args.threads:
            options["threads"] = self.args.threads
        if self.args.max_steps:
            options["max_steps"] = self.args.max_steps
        if self.args.patience:
            options["patience"] = self.args.patience
        if self.args.max_dev:
            options["max_dev"] = self.args.max_dev
        if self.args.max_test:
            options["max_test"] = self.args.max_test
        return dt.train(model, self.args.data, out=str(run_dir), callbacks=[report], progress=False,
                        test_before=False, seed=seed, metric=metric, **options)


# A trial whose settings the library refuses (a ConfigError) fails and the search goes on, as the rest of
# the space may be fine; this many failures in a row, though, mean the space itself is wrong (failed
# trials never count towards --trials, so without a bound such a search would never end).
MAX_FAILURES_IN_A_ROW = 5


class StopAfterFailures:
    def __init__(self, optuna, limit):
        self.optuna, self.limit, self.in_a_row = optuna, limit, 0

    def __call__(self, study, trial):
        failed = trial.state == self.optuna.trial.TrialState.FAIL
        self.in_a_row = self.in_a_row + 1 if failed else 0
        if self.in_a_row >= self.limit:
            print(f"deltatune tune: {self.limit} trials in a row failed (the errors above); stopping",
                  file=sys.stderr)
            study.stop()


def finished_trials(study, optuna):
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [t for t in study.get_trials(deepcopy=False) if t.state in done]


def mean_std(values):
    """"mean ± std" of a list (the std over data seeds), "" when there is nothing."""
    if not values:
        return ""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.4f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.4f} ± {std:.4f}"


def leaderboard_rows(study, optuna, lower_is_better):
    rows = []
    for t in finished_trials(study, optuna):
        rows.append({
            "trial": t.number, "state": t.state.name.lower(),
            "score": t.value if t.value is not None else "", "std": t.user_attrs.get("std", ""),
            "test": mean_std(t.user_attrs.get("test_scores")),
            "method": t.params.get("method", ""),
            "settings": json.dumps({k: v for k, v in t.params.items() if k != "method"}, sort_keys=True),
            "seconds": round(t.duration.total_seconds(), 1) if t.duration else "",
        })
    complete = [r for r in rows if r["state"] == "complete"]
    others = [r for r in rows if r["state"] != "complete"]
    complete.sort(key=lambda r: r["score"], reverse=not lower_is_better)
    return complete + others


def write_leaderboard(out, rows, metric):
    fields = ["rank", "trial", "state", "score", "std", "test", "method", "settings", "seconds"]
    with open(out / "leaderboard.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for i, r in enumerate(rows, 1):
            writer.writerow({"rank": i, **r})
    lines = [f"| rank | trial | state | dev {metric} | std | test {metric} | method | settings | seconds |",
             "|---:|---:|---|---:|---:|---:|---|---|---:|"]
    for i, r in enumerate(rows, 1):
        score = f"{r['score']:.4f}" if r["score"] != "" else ""
        std = f"{r['std']:.4f}" if r["std"] != "" else ""
        lines.append(f"| {i} | {r['trial']} | {r['state']} | {score} | {std} | {r['test']} | {r['method']} | "
                     f"`{r['settings']}` | {r['seconds']} |")
    (out / "leaderboard.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_best(out, best, args):
    """best_config.yaml (flags of `deltatune train`), best_delta_config.json and best/ (the best run)."""
    delta_file = (out / "best_delta_config.json").resolve()
    delta = best.user_attrs["delta_config"]
    delta_file.write_text(json.dumps(delta, indent=2) + "\n")
    config = {"model": str(pathlib.Path(args.model).resolve()), "data": str(pathlib.Path(args.data).resolve())}
    if delta["method"] in WHOLE_MODEL_METHODS:
        config["method"] = delta["method"]
    else:
        config["delta-config"] = str(delta_file)
    config.update({"batch-size": args.batch_size, "metric": args.metric, "seed": data_seeds(args)[0]})
    if args.k_shot:
        config["k-shot"] = args.k_shot
    if args.max_length:
        config["max-length"] = args.max_length
    if args.max_steps:
        config["max-steps"] = args.max_steps
    if args.patience:
        config["patience"] = args.patience
    if args.max_dev:
        config["max-dev"] = args.max_dev
    if args.max_test:
        config["max-test"] = args.max_test
    for key, value in best.user_attrs["train_options"].items():
        config[FLAG_NAMES[key]] = value
    import yaml
    header = (f"# The best trial ({best.number}, dev {args.metric} {best.value:.4f}) of deltatune tune:\n"
              f"#   deltatune train --config {out / 'best_config.yaml'} --out DIR\n")
    (out / "best_config.yaml").write_text(header + yaml.safe_dump(config, sort_keys=False))
    best_run = pathlib.Path(best.user_attrs["runs"][0])
    if best_run.exists():
        if (out / "best").exists():
            shutil.rmtree(out / "best")
        shutil.copytree(best_run, out / "best", ignore=shutil.ignore_patterns("checkpoint"))


def write_plots(out, study, optuna):
    """optimization_history.png and param_importances.png (when Optuna can rank the parameters)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as oplt
    import warnings
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    written = []
    for name, draw in (("optimization_history", oplt.plot_optimization_history),
                       ("param_importances", oplt.plot_param_importances)):
        try:
            ax = draw(study)
        except (ValueError, RuntimeError, ImportError) as e:  # too few trials to rank; no scikit-learn
            print(f"deltatune tune: no {name}.png ({e})", file=sys.stderr)
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
        plt.close(fig)
        written.append(name)
    return written


def open_study(optuna, args, space, storage, direction, pruner):
    """The study, created by whichever worker comes first. Workers starting together on a fresh
    database race to create its tables and the study; the loser's attempt fails and is retried, by
    when the winner's are there. The sampler's seed differs per process, so workers propose apart."""
    seed = args.seed + os.getpid() % 10007 if args.storage else args.seed
    if args.sampler == "grid":
        sampler = optuna.samplers.GridSampler(grid_space(space), seed=seed)
    elif args.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
    for attempt in range(6):
        try:
            return optuna.create_study(study_name=args.study_name, storage=storage, load_if_exists=True,
                                       direction=direction, sampler=sampler, pruner=pruner)
        except Exception:  # sqlalchemy's IntegrityError / ProgrammingError from the race
            if attempt == 5:
                raise
            time.sleep(0.5 + random.random())


def parse_args(argv):
    p = argparse.ArgumentParser(prog="deltatune tune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Model folder")
    p.add_argument("--data", required=True, help="Task folder (train/dev[/test] .jsonl, .csv or .tsv)")
    p.add_argument("--out", "--output", required=True, help="Run folder (the study, trials and results)")
    p.add_argument("--space", help="Search space (YAML or JSON; default: a space over 8 methods)")
    p.add_argument("--trials", type=int, required=True, help="Finished trials the study should hold in total")
    p.add_argument("--timeout", type=float, help="Stop starting trials after this many seconds")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///RUN_DIR/study.db); "
                                     "postgresql://... lets several workers share the study")
    p.add_argument("--study-name", default="deltatune", help="Study name in the storage")
    p.add_argument("--task", default="classification", help="Model task (classification)")
    p.add_argument("--metric", default="accuracy", help="Dev metric to optimise (default accuracy)")
    p.add_argument("--k-shot", type=int, help="Few-shot: train on K examples drawn with the data seed, dev = the "
                                              "next 1000 (the UniPELT protocol)")
    p.add_argument("--max-dev", type=int, help="Evaluate on the first N dev examples only (0: all)")
    p.add_argument("--max-test", type=int, help="Test on the first N test examples only (0: all)")
    p.add_argument("--data-seeds", help="Data seeds per trial: a count N (seeds 1..N) or a list 1,2,3; "
                                        "the trial's score is their mean")
    p.add_argument("--seed", type=int, default=42, help="Training seed (without --data-seeds) and sampler seed")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int)
    p.add_argument("--max-steps", type=int, help="Cap every run at N updates")
    p.add_argument("--patience", type=int, help="Early stopping after N evaluations without improvement")
    p.add_argument("--pruner", choices=["hyperband", "halving", "none"], default="hyperband")
    p.add_argument("--sampler", choices=["tpe", "grid", "random"], default="tpe",
                   help="Optuna's sampler: TPE (default); grid tries every combination of the space's "
                        "lists (each setting a list or fixed; the study ends when all are tried); random")
    p.add_argument("--threads", type=int, help="CPU threads per worker")
    args = p.parse_args(argv)
    if args.trials < 1:
        p.error("--trials must be at least 1")
    for name in ("max_dev", "max_test"):
        if (getattr(args, name) or 0) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import optuna
    import deltatune as dt
    space = read_space(args.space)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    lower = args.metric in LOWER_IS_BETTER
    pruner = {"hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3),
              "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
              "none": optuna.pruners.NopPruner}[args.pruner]()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(optuna, args, space, storage, "minimize" if lower else "maximize", pruner)
    done = len(finished_trials(study, optuna))
    print(f"deltatune tune: study '{args.study_name}' in {storage.split('@')[-1]}: {done} of {args.trials} "
          f"trials finished", file=sys.stderr)
    if done < args.trials:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        study.optimize(Objective(args, space, optuna, dt), timeout=args.timeout,
                       callbacks=[optuna.study.MaxTrialsCallback(args.trials, states=states),
                                  StopAfterFailures(optuna, MAX_FAILURES_IN_A_ROW)])
    rows = leaderboard_rows(study, optuna, lower)
    write_leaderboard(out, rows, args.metric)
    complete = [t for t in finished_trials(study, optuna) if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        print("deltatune tune: no trial completed", file=sys.stderr)
        return 1
    best = study.best_trial
    write_best(out, best, args)
    write_plots(out, study, optuna)
    print(f"best: trial {best.number}, {best.params.get('method')}, dev {args.metric} {best.value:.4f}")
    print(f"  {out / 'leaderboard.md'}\n  deltatune train --config {out / 'best_config.yaml'} --out DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
