"""Training from Python: the same delta as `deltatune train` bit for bit, data in memory, callbacks,
the GIL released, Ctrl-C and callback errors stopping cleanly, divergence, and PEFT saves the
command loads."""
import json
import os
import signal
import threading

import numpy as np
import pytest

import deltatune as dt
from conftest import BERT, SENTIMENT, read_safetensors, run_cli

STEPS = 6  # a few updates: enough to make every weight differ from its initial value
THREADS = 2  # bit for bit needs the same threads on both sides (sums split across threads round differently)


def same_tensors(a, b):
    x, y = read_safetensors(a), read_safetensors(b)
    assert sorted(x) == sorted(y)
    for name in x:
        assert x[name].tobytes() == y[name].tobytes(), name


def test_python_delta_equals_the_commands_bit_for_bit(tmp):
    run_cli("train", "--model", BERT, "--data", SENTIMENT, "--method", "lora", "--max-steps", STEPS,
            "--seed", 7, "--out", tmp / "cli", "--quiet", "--no-test-before", "--threads", THREADS)
    model = dt.load_model(BERT, task="classification", num_labels=2)
    delta = dt.attach(model, "lora")
    result = dt.train(model, data=SENTIMENT, max_steps=STEPS, seed=7, out=str(tmp / "py"), progress=False,
                      test_before=False, threads=THREADS)
    assert result.steps == STEPS and result.stop_reason == "max_steps"
    same_tensors(tmp / "cli" / "delta" / "delta.safetensors", tmp / "py" / "delta" / "delta.safetensors")
    same_tensors(tmp / "cli" / "peft" / "adapter_model.safetensors", tmp / "py" / "peft" / "adapter_model.safetensors")
    cli_summary = json.loads((tmp / "cli" / "summary.json").read_text())
    assert result.test == cli_summary["test"] and result.dev == cli_summary["dev"]
    # The handle attach returned now holds the trained delta: saving it gives the run's tensors.
    delta.save(str(tmp / "again"))
    same_tensors(tmp / "py" / "delta" / "delta.safetensors", tmp / "again" / "delta.safetensors")
    # Training again would start from the folder, not from these weights: refused, saying what to do.
    with pytest.raises(ValueError, match="resume=True"):
        dt.train(model, SENTIMENT, max_steps=1, progress=False)


def test_dict_config_equals_delta_config_file(tmp):
    config = {"method": "lora", "r": 4, "alpha": 8, "targets": ["attn.q", "attn.v"]}
    (tmp / "config.json").write_text(json.dumps(config))
    run_cli("train", "--model", BERT, "--data", SENTIMENT, "--delta-config", tmp / "config.json", "--max-steps",
            STEPS, "--out", tmp / "cli", "--quiet", "--no-test-before", "--threads", THREADS)
    model = dt.load_model(BERT, task="classification")
    dt.attach(model, dt.DeltaConfig("lora", r=4, alpha=8, targets=["attn.q", "attn.v"]))
    dt.train(model, SENTIMENT, max_steps=STEPS, out=tmp / "py", progress=False, test_before=False, threads=THREADS)
    same_tensors(tmp / "cli" / "delta" / "delta.safetensors", tmp / "py" / "delta" / "delta.safetensors")


def test_peft_save_from_python_loads_in_the_command(tmp):
    model = dt.load_model(BERT, task="classification")
    delta = dt.attach(model, "lora")
    dt.train(model, SENTIMENT, max_steps=STEPS, progress=False, test_before=False)  # in memory
    delta.save(str(tmp / "peft"), format="peft")
    assert (tmp / "peft" / "adapter_config.json").exists()
    texts = ["a great film", "dull and far too long"]
    (tmp / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cli = [json.loads(line) for line in run_cli("predict", "--model", BERT, "--delta", tmp / "peft", "--input",
                                                tmp / "in.jsonl").splitlines()]
    ours = dt.predict(model, texts)
    assert [p["label"] for p in ours] == [p["label"] for p in cli]
    for a, b in zip(ours, cli):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)
    # ... and in Python again, with its head and classes.
    again = dt.load_model(BERT, delta=str(tmp / "peft"))
    assert dt.predict(again, texts) == ours
    assert again.labels == model.labels


def test_data_in_memory_lists_columns_and_splits(tmp):
    rows = [json.loads(line) for line in open(os.path.join(SENTIMENT, "train.jsonl"))][:64]
    dev = [json.loads(line) for line in open(os.path.join(SENTIMENT, "dev.jsonl"))][:32]
    columns = {"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]}
    events = []
    for data in (rows, columns, {"train": rows, "validation": dev}):
        model = dt.load_model(BERT, task="classification")
        dt.attach(model, "lora")
        result = dt.train(model, data, epochs=1, batch_size=16, progress=False, callbacks=[events.append])
        assert result.steps == 4 and result.run_dir == ""
    assert result.dev is not None and set(result.dev) >= {"accuracy", "loss"}
    kinds = {e["event"] for e in events}
    assert {"start", "update", "eval", "end", "note"} <= kinds
    update = next(e for e in events if e["event"] == "update")
    assert update["step"] == 1 and np.isfinite(update["loss"])
    with pytest.raises(ValueError, match="text"):
        dt.train(dt.load_model(BERT, task="classification"), [{"label": 1}], progress=False)


def test_bad_options_and_missing_data(tmp):
    model = dt.load_model(BERT, task="classification")
    with pytest.raises(FileNotFoundError):
        dt.train(model, str(tmp / "no-data"), progress=False)
    with pytest.raises(TypeError, match="unexpected option"):
        dt.train(model, SENTIMENT, batchsize=3, progress=False)
    with pytest.raises(ValueError):
        dt.train(model, SENTIMENT, epochs=0, progress=False)
    with pytest.raises(ValueError, match="metric"):
        dt.train(model, SENTIMENT, metric="bleu", progress=False)


def test_divergence_raises_training_diverged():
    model = dt.load_model(BERT, task="classification")
    with pytest.raises(dt.TrainingDiverged, match="nan|inf"):
        dt.train(model, SENTIMENT, method="full", lr=1e12, max_steps=30, progress=False, test_before=False)


def test_the_gil_is_released_while_training():
    counted = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            counted[0] += 1

    model = dt.load_model(BERT, task="classification")
    dt.attach(model, "lora")
    thread = threading.Thread(target=count)
    thread.start()
    try:
        before = counted[0]
        dt.train(model, SENTIMENT, max_steps=4, progress=False, test_before=False)
        during = counted[0] - before
    finally:
        stop.set()
        thread.join()
    # Holding the GIL, the thread would only have run in the switch intervals around the call.
    assert during > 100_000


def test_ctrl_c_stops_training_with_a_checkpoint(tmp):
    started = threading.Event()

    def interrupt():
        started.wait()
        os.kill(os.getpid(), signal.SIGINT)

    model = dt.load_model(BERT, task="classification")
    dt.attach(model, "lora")
    thread = threading.Thread(target=interrupt)
    thread.start()
    with pytest.raises(KeyboardInterrupt):
        dt.train(model, SENTIMENT, epochs=50, out=str(tmp / "run"), progress=False, test_before=False,
                 callbacks=[lambda e: e["event"] == "update" and started.set()])
    thread.join()
    assert (tmp / "run" / "checkpoint").is_dir()
    # The run continues from it.
    result = dt.train(model, SENTIMENT, epochs=50, max_steps=3, out=str(tmp / "run"), resume=True, progress=False,
                      test_before=False)
    assert result.steps == 3


def test_an_exception_in_a_callback_stops_the_run_and_is_raised(tmp):
    def fail(event):
        if event["event"] == "update" and event["step"] == 2:
            raise RuntimeError("callback says stop")

    model = dt.load_model(BERT, task="classification")
    with pytest.raises(RuntimeError, match="callback says stop"):
        dt.train(model, SENTIMENT, epochs=50, progress=False, test_before=False, callbacks=[fail])
