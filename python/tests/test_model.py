"""The model side of `import deltatune`: loading, printing, the trainable count, numpy forward
(against the command's `forward`), tensors, the tokenizer, and errors as Python exceptions."""
import json

import numpy as np
import pytest

import deltatune as dt
from conftest import BERT, GPT2, read_safetensors, run_cli


def test_version_and_docstrings():
    assert dt.__version__.count(".") == 2
    for name in dt.__all__:
        obj = getattr(dt, name)
        if callable(obj) and not isinstance(obj, type) or name in ("Model", "Delta", "Tensor", "Tokenizer"):
            assert obj.__doc__, f"{name} has no docstring"


def test_print_is_inspect_and_trainable_line_is_pefts(capsys):
    model = dt.load_model(BERT, task="classification", num_labels=2)
    assert str(model) == run_cli("inspect", BERT, "--head", "sequence-classification")
    delta = dt.attach(model, {"method": "lora", "r": 8, "targets": ["attn.q", "attn.v"]})
    assert delta.method == "lora" and delta.config["r"] == 8
    model.print_trainable_parameters()
    line = capsys.readouterr().out.strip()
    trainable, total = model.get_nb_trainable_parameters()
    assert line == f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
    assert trainable == 99_074  # 8 LoRA pairs of rank 8 on 256-wide layers, and the 2-label head
    assert "lora" in str(model) and "trainable 99,074" in str(model)


def test_numpy_forward_equals_the_commands(tmp):
    ids = {"input_ids": [[2, 40, 41, 42, 3], [2, 50, 51, 3, 0]], "attention_mask": [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]}
    (tmp / "ids.json").write_text(json.dumps(ids))
    run_cli("forward", "--model", BERT, "--input", tmp / "ids.json", "--output", tmp / "out.safetensors")
    cli = read_safetensors(tmp / "out.safetensors")
    model = dt.load_model(BERT)
    out = model(input_ids=np.array(ids["input_ids"]), attention_mask=np.array(ids["attention_mask"]))
    assert out.last_hidden_state.dtype == np.float32
    np.testing.assert_array_equal(out.last_hidden_state, cli["last_hidden_state"])
    if "logits" in cli:
        np.testing.assert_array_equal(out.logits, cli["logits"])
    assert out["last_hidden_state"] is out.last_hidden_state


def test_gpt2_logits_equal_the_commands(tmp):
    ids = {"input_ids": [[10, 20, 30, 40]]}
    (tmp / "ids.json").write_text(json.dumps(ids))
    run_cli("forward", "--model", GPT2, "--input", tmp / "ids.json", "--output", tmp / "out.safetensors")
    out = dt.load_model(GPT2, task="causal-lm")(input_ids=np.array(ids["input_ids"], dtype=np.int32))
    np.testing.assert_array_equal(out.logits, read_safetensors(tmp / "out.safetensors")["logits"])


def test_tensors_share_memory_through_the_buffer_protocol():
    model = dt.load_model(BERT)
    weights = model.state_dict()
    w = weights["bert.embeddings.word_embeddings.weight"]
    assert isinstance(w, dt.Tensor) and w.shape == (8192, 256) and w.dtype == "float32"
    a, b = np.asarray(w), w.numpy()
    assert a.shape == (8192, 256) and np.shares_memory(a, b)
    assert memoryview(w).format == "f"


def test_tokenizer_encode_decode():
    tok = dt.load_tokenizer(GPT2)
    ids = tok.encode("The whale swims")
    assert tok.decode(ids) == "The whale swims"
    cli = json.loads(run_cli("tokenize", "--model", GPT2, "--text", "The whale swims").splitlines()[0])
    assert ids == cli["ids"]
    batch = tok(["a b", "a b c d"])
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["attention_mask"][0, -1] == 0


def test_errors_are_python_exceptions(tmp):
    with pytest.raises(FileNotFoundError):
        dt.load_model(str(tmp / "nowhere"))
    with pytest.raises(FileNotFoundError):
        dt.load_tokenizer(str(tmp / "nowhere"))
    model = dt.load_model(BERT, task="classification")
    with pytest.raises(ValueError, match="r"):
        dt.attach(model, {"method": "lora", "r": -3})
    with pytest.raises(ValueError):
        dt.attach(model, "no-such-method")
    with pytest.raises(dt.ConfigError):
        dt.load_model(BERT, task="translation")
    with pytest.raises(ValueError, match="vocabulary"):
        model(input_ids=np.array([[2, 99999]]))
    with pytest.raises(ValueError, match="shape"):
        model(input_ids=np.array([[2, 3]]), attention_mask=np.array([[1, 1, 1]]))
    with pytest.raises(FileNotFoundError):
        dt.load_delta(model, str(tmp / "missing"))
    assert issubclass(dt.TrainingDiverged, dt.Error) and issubclass(dt.ConfigError, ValueError)


def test_the_stub_names_every_public_name():
    import ast
    import pathlib
    stub = pathlib.Path(dt.__file__).with_name("__init__.pyi")
    names = set()
    for node in ast.parse(stub.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            names.add(node.target.id)
    assert set(dt.__all__) <= names, set(dt.__all__) - names


def test_runtime_settings():
    before = dt.runtime()["threads"]
    try:
        dt.set_runtime(threads=1)
        assert dt.runtime()["threads"] == 1
        with pytest.raises(ValueError):
            dt.set_runtime(threads=0)
    finally:
        dt.set_runtime(threads=before)  # the process's other tests compare with the command's threads
    assert "lora" in dt.method_names()
