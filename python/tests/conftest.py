"""Shared helpers of the Python suite: where the command and the mini models are, running the command,
and reading the safetensors files it writes (numpy only)."""
import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"
BERT = str(ASSETS / "models" / "bert-mini")
GPT2 = str(ASSETS / "models" / "gpt2-mini")
SENTIMENT = str(ASSETS / "tasks" / "sentiment")
CLI = os.environ.get("DELTATUNE_CLI", str(ROOT / "build" / "deltatune"))


def run_cli(*args):
    """Runs `deltatune ARGS`; returns its stdout (fails the test with its stderr when it fails)."""
    done = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, f"deltatune {' '.join(map(str, args))} failed:\n{done.stderr}"
    return done.stdout


_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path):
    """{name: numpy array} of a safetensors file."""
    raw = pathlib.Path(path).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    data = raw[8 + header_len:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(data[begin:end], dtype=_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


@pytest.fixture
def tmp(tmp_path):
    return tmp_path
