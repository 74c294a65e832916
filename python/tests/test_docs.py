"""The README's Python section and the example script run as written (from a folder that has the
repository's assets, so their relative paths hold)."""
import os
import pathlib
import re
import subprocess
import sys

from conftest import ROOT


def run_python(code_or_file, cwd):
    (cwd / "assets").symlink_to(ROOT / "assets")
    args = [sys.executable, code_or_file] if str(code_or_file).endswith(".py") else [sys.executable, "-c", code_or_file]
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_readme_python_section_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    out = run_python(code, tmp_path)
    assert "trainable params: 99,074 || all params: 5,487,362 || trainable%: 1.8055" in out
    assert (tmp_path / "runs" / "py" / "peft" / "adapter_config.json").exists()


def test_example_notebook_runs(tmp_path):
    out = run_python(str(ROOT / "examples" / "python" / "notebook.py"), tmp_path)
    assert "reloaded:" in out and "test accuracy" in out
