"""deltatune from Python, step by step, as a notebook would run it (each block is a cell).

Run from the repository root after `make python` (or `pip install --no-build-isolation .`):

    PYTHONPATH=build/python python3 examples/python/notebook.py

It fine-tunes bert-mini with LoRA on the built-in sentiment task, evaluates it, predicts a few texts,
saves the delta in PEFT's format and loads it back.
"""
import numpy as np

import deltatune as dt

# %% Load a Hugging Face model folder with a new classification head, and look at it.
model = dt.load_model("assets/models/bert-mini", task="classification", num_labels=2)
print(model)

# %% Attach LoRA to the query and value projections (a PEFT LoraConfig's fields).
delta = dt.attach(model, dt.DeltaConfig("lora", r=8, alpha=16, targets=["attn.q", "attn.v"]))
model.print_trainable_parameters()

# %% Train: progress arrives in the callback as dicts; the run folder holds delta/, peft/, summary.json.
losses = []


def on_event(event):
    if event["event"] == "update":
        losses.append(event["loss"])
    elif event["event"] == "eval":
        print(f"epoch {event['epoch']:.0f}: dev accuracy {event['metrics']['accuracy']:.4f}")


result = dt.train(model, data="assets/tasks/sentiment", epochs=1, out="runs/notebook", overwrite=True,
                  callbacks=[on_event], progress=False)
print(f"{result.steps} updates, loss {losses[0]:.3f} -> {np.mean(losses[-10:]):.3f}")
print(f"test accuracy {result.test_before['accuracy']:.4f} before -> {result.test['accuracy']:.4f} after")

# %% Predict, and look at the logits of one batch directly (numpy in, numpy out).
for text, p in zip(["a great film", "dull and far too long"], dt.predict(model, ["a great film", "dull and far too long"])):
    print(f"{text!r}: {p['label']} {p['probabilities']}")
batch = model.tokenizer(["a great film", "dull and far too long"])
logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
print("logits", logits.shape, logits.dtype)

# %% Save the delta in PEFT's format (transformers + PEFT load it too) and load it onto a fresh base.
delta.save("runs/notebook/my-peft-adapter", format="peft")
again = dt.load_model("assets/models/bert-mini", delta="runs/notebook/my-peft-adapter")
assert [p["label"] for p in dt.predict(again, ["a great film"])] == [dt.predict(model, ["a great film"])[0]["label"]]
print("reloaded:", again.deltas[0], again.labels)
