"""Generation, prediction with a causal LM, and the delta operations: load_delta, merge (against the
command's merged checkpoint), combine (against the command's combine)."""
import json

import numpy as np
import pytest

import deltatune as dt
from conftest import BERT, GPT2, SENTIMENT, read_safetensors, run_cli


def test_generate_equals_the_commands():
    model = dt.load_model(GPT2, task="causal-lm")
    for extra, kwargs in (([], {}), (["--sample", "--seed", "1"], {"do_sample": True, "seed": 1})):
        cli = run_cli("generate", "--model", GPT2, "--prompt", "The whale", "--max-new-tokens", 12, *extra)
        assert dt.generate(model, "The whale", max_new_tokens=12, **kwargs) + "\n" == cli
    assert not dt.generate(model, "The whale", max_new_tokens=5, return_full_text=False).startswith("The whale")
    with pytest.raises(ValueError, match="causal LM"):
        dt.generate(dt.load_model(BERT, task="classification"), "x")


def test_predict_with_a_causal_lm_continues_texts():
    model = dt.load_model(GPT2, task="causal-lm")
    out = dt.predict(model, ["The whale"], max_new_tokens=6)
    assert out[0]["text"] == "The whale"
    assert out[0]["generated"] == dt.generate(model, "The whale", max_new_tokens=6, return_full_text=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two LoRA deltas trained a few steps by the command (different seeds)."""
    root = tmp_path_factory.mktemp("runs")
    for seed in (1, 2):
        run_cli("train", "--model", BERT, "--data", SENTIMENT, "--method", "lora", "--max-steps", 4, "--seed",
                seed, "--out", root / f"run{seed}", "--quiet", "--no-test-before")
    return root


def test_load_delta_reproduces_the_runs_predictions(trained, tmp):
    texts = [json.loads(line)["text"] for line in open(f"{SENTIMENT}/test.jsonl")][:8]
    (tmp / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cli = [json.loads(line) for line in run_cli("predict", "--model", BERT, "--delta", trained / "run1" / "delta",
                                                "--input", tmp / "in.jsonl").splitlines()]
    model = dt.load_model(BERT, task="classification")
    delta = dt.load_delta(model, str(trained / "run1" / "delta"))
    assert delta.method == "lora" and len(delta.state_dict()) == 16
    assert dt.predict(model, texts) == cli


def test_merge_equals_the_commands_checkpoint(trained, tmp):
    run_cli("merge", "--model", BERT, "--delta", trained / "run1" / "delta", "--out", tmp / "cli")
    model = dt.load_model(BERT, delta=str(trained / "run1" / "delta"))
    ids = np.array([[2, 40, 41, 42, 3]])
    before = model(input_ids=ids).logits
    merged = dt.merge(model)
    assert merged is model or merged.path == model.path
    np.testing.assert_allclose(merged(input_ids=ids).logits, before, atol=1e-5)
    merged.save_pretrained(str(tmp / "py"))
    ours, cli = read_safetensors(tmp / "py" / "model.safetensors"), read_safetensors(tmp / "cli" / "model.safetensors")
    assert sorted(ours) == sorted(cli)
    for name in ours:
        np.testing.assert_array_equal(ours[name], cli[name], err_msg=name)


def test_combine_equals_the_commands(trained, tmp):
    run_cli("combine", "--model", BERT, "--delta", trained / "run1" / "delta", "--delta", trained / "run2" / "delta",
            "--weights", "0.7,0.3", "--type", "ties", "--density", "0.5", "--out", tmp / "cli")
    a = dt.load_model(BERT, delta=str(trained / "run1" / "delta"))
    b = dt.load_model(BERT, delta=str(trained / "run2" / "delta"))
    combined = dt.combine([a.deltas[0], b.deltas[0]], weights=[0.7, 0.3], type="ties", density=0.5)
    with pytest.raises(ValueError, match="not attached"):
        combined.save(str(tmp / "nowhere"))
    base = dt.load_model(BERT, delta=str(trained / "run1" / "delta"))
    dt.merge(base)  # ... a model with run1's head, the LoRA folded away, so only the combination acts
    delta = dt.attach(base, combined)
    delta.save(str(tmp / "py"))
    ours, cli = read_safetensors(tmp / "py" / "delta.safetensors"), read_safetensors(tmp / "cli" / "delta.safetensors")
    lora = [n for n in cli if "lora_" in n]
    assert lora and all(n in ours for n in lora)
    for name in lora:
        np.testing.assert_array_equal(ours[name], cli[name], err_msg=name)
    with pytest.raises(ValueError):
        dt.combine([a.deltas[0]], type="no-such-type")
