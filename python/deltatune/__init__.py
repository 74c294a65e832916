"""deltatune: delta tuning (LoRA, adapters, prefix/prompt tuning, IA3, ...) of pretrained transformers.

A Python front end over the C++ library: the same code paths as the ``deltatune`` command.

    import deltatune as dt
    model = dt.load_model("assets/models/bert-mini", task="classification", num_labels=2)
    delta = dt.attach(model, {"method": "lora", "r": 8, "targets": ["attn.q", "attn.v"]})
    model.print_trainable_parameters()
    result = dt.train(model, data="assets/tasks/sentiment", epochs=3, out="runs/py")
    print(result.test["accuracy"])
    delta.save("runs/py/peft", format="peft")
"""
import os as _os
from collections.abc import Mapping as _Mapping

# libgomp reads its wait policy once, when it loads: idle OpenMP threads that spin steal the cores
# other work needs (the command sets the same before it runs; see tools/wait_policy.h).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ._deltatune import (  # noqa: E402
    ConfigError,
    Delta,
    Error,
    IoError,
    Model,
    ModelOutput,
    Tensor,
    TensorError,
    Tokenizer,
    TrainingDiverged,
    __version__,
    combine,
    generate,
    load_delta,
    load_model,
    load_tokenizer,
    merge,
    predict,
    runtime,
    set_runtime,
)
from . import _deltatune  # noqa: E402

__all__ = [
    "ConfigError", "Delta", "DeltaConfig", "Error", "IoError", "Model", "ModelOutput", "Tensor", "TensorError",
    "Tokenizer", "TrainResult", "TrainingDiverged", "__version__", "attach", "combine", "generate",
    "load_delta", "load_model", "load_tokenizer", "merge", "method_names", "predict", "runtime",
    "set_runtime", "train",
]


class DeltaConfig:
    """A delta's settings, as a PEFT ``LoraConfig`` holds them: ``DeltaConfig("lora", r=8, alpha=16,
    targets=["attn.q", "attn.v"])``. The fields are those of a delta config file (``delta_config.json``);
    what is left out takes the method's defaults from the method table."""

    def __init__(self, method="lora", **settings):
        self.method = method
        self.settings = dict(settings)

    def to_dict(self):
        """The config as ``attach`` and ``delta_config.json`` take it."""
        return {"method": self.method, **self.settings}

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"DeltaConfig({self.method!r}{', ' if fields else ''}{fields})"


def attach(model, config="lora", name=""):
    """Attaches a delta to the model and returns it (a ``Delta``).

    ``config``: a method or preset name ("lora", "houlsby", ...: the method table's config), a dict
    (``{"method": "lora", "r": 8, "targets": ["attn.q", "attn.v"]}``, read as ``train --delta-config``
    reads a file), a ``DeltaConfig``, or a combination from ``combine``. Bad settings raise ValueError
    (``deltatune.ConfigError``)."""
    if isinstance(config, DeltaConfig):
        config = config.to_dict()
    return _deltatune.attach(model, config, name)


def method_names():
    """Every name ``attach`` and ``train(method=...)`` accept: full, head, none, the delta methods, the presets."""
    return _deltatune._method_names()


class TrainResult:
    """What ``train`` returns: the run's ``summary`` (summary.json) and its parts as attributes:
    ``test`` and ``test_before`` (test metrics after and before training), ``dev`` (the best dev metrics),
    ``losses`` (per update), ``steps``, ``stop_reason`` and ``run_dir`` ("" for a run in memory)."""

    def __init__(self, raw):
        self.summary = raw["summary"] or {}
        self.losses = raw["losses"]
        self.steps = raw["steps"]
        self.stop_reason = raw["stop_reason"]
        self.run_dir = raw["run_dir"]
        self.test = self.summary.get("test")
        self.test_before = self.summary.get("test_before")
        self.dev = self.summary.get("dev")

    def __repr__(self):
        main = ""
        if isinstance(self.test, dict):
            key = "accuracy" if "accuracy" in self.test else "perplexity"
            main = f", test {key} {self.test[key]:.4f}"
        return f"TrainResult({self.steps} steps, {self.stop_reason}{main})"


_SPLITS = {"train": "train", "dev": "dev", "validation": "dev", "test": "test"}


def _columns_to_rows(columns, what):
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"{what}: the columns have different lengths ({sorted(lengths)})")
    n = lengths.pop() if lengths else 0
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]


def _rows(examples, fields, what):
    """(text, text_pair, label) tuples of a list of dicts or a dict of columns."""
    text_field, pair_field, label_field = fields
    if isinstance(examples, _Mapping):
        examples = _columns_to_rows(examples, what)
    rows = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, _Mapping):
            raise TypeError(f"{what}[{i}]: expected a dict like {{'{text_field}': ..., '{label_field}': ...}}")
        if text_field not in ex:
            raise ValueError(f"{what}[{i}] has no '{text_field}'")
        pair = ex.get(pair_field)
        label = ex.get(label_field)
        if hasattr(label, "item"):
            label = label.item()  # numpy scalars
        if isinstance(label, bool) or isinstance(label, float):
            raise ValueError(f"{what}[{i}]: a label is a string or an integer, got {label!r}")
        rows.append((str(ex[text_field]), None if pair is None else str(pair),
                     None if label is None else str(label)))
    return rows


def _splits(data, fields):
    """In-memory data as {"train": rows, "dev": rows, "test": rows}: a list of dicts (train), a dict of
    columns (train), or a dict of splits (train/validation or dev/test), each either of those."""
    if isinstance(data, _Mapping) and data and set(data) <= set(_SPLITS):
        out = {}
        for key, split in data.items():
            out[_SPLITS[key]] = _rows(split, fields, key)
        if "train" not in out:
            raise ValueError("the splits need a 'train' split")
        return out
    return {"train": _rows(data, fields, "train")}


def train(model, data, *, epochs=3, lr=None, out=None, callbacks=None, progress=True, **options):
    """Trains the model's attached delta (or ``method=``: "lora" by default, "full", "head", a preset)
    with the library's training workflow, the one ``deltatune train`` runs, and returns a ``TrainResult``.

    ``data``: a task folder (train/dev/test .jsonl, .csv or .tsv) or one training file; or in memory, a
    list of dicts ({"text", "label"}, optionally "text_pair"), a dict of columns, or a dict of splits
    ("train", "validation"/"dev", "test"), as a ``datasets`` user holds them. ``out``: the run folder
    (delta/, peft/, summary.json, checkpoint/, ...); None trains in memory and writes nothing.
    ``callbacks``: callables receiving each event as a dict ({"event": "update", "step", "loss", ...};
    also "start", "eval", "checkpoint", "note", "warning", "end"). ``progress``: the progress bar on stderr.

    Options (the command's flags, with underscores): batch_size, max_length, seed, method, max_steps,
    eval_every, checkpoint_every, patience, metric, weight_decay, warmup_ratio, schedule, optimizer,
    momentum, max_grad_norm, grad_accum, bucket, k_shot, max_dev, max_test, eval_batch_size, text_field, pair_field,
    label_field, threads, test_before, overwrite, resume, log_every.

    The trained weights (the best on dev) replace the model's; the delta handle ``attach`` returned now
    holds them. The GIL is released while training runs. Ctrl-C stops after the current update (the
    run's checkpoint is kept; ``resume=True`` continues it) and raises KeyboardInterrupt; an exception in a
    callback stops the run the same way and is re-raised. A diverged run raises ``TrainingDiverged``."""
    options.update(epochs=epochs, lr=lr, out=None if out is None else _os.fspath(out))
    callbacks = list(callbacks or [])
    for callback in callbacks:
        if not callable(callback):
            raise TypeError(f"callbacks must be callables, got {callback!r}")
    if isinstance(data, (str, _os.PathLike)):
        raw = _deltatune._train(model, _os.fspath(data), None, options, callbacks, progress)
    else:
        fields = (options.get("text_field") or "text", options.get("pair_field") or "text_pair",
                  options.get("label_field") or "label")
        raw = _deltatune._train(model, None, _splits(data, fields), options, callbacks, progress)
    return TrainResult(raw)
