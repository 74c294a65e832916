"""README: Python's install form, `pip install --no-build-isolation .` into a venv over Debian's Python,
builds a package that stands alone: it imports from any folder without PYTHONPATH or the build folder,
and the model and delta tests pass against the installed copy. (This test builds the library once more,
as setup.py does: minutes, hence its own ctest timeout.)"""
import os
import subprocess
import sys

from conftest import BERT, ROOT


def run(args, **kwargs):
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_pip_install_into_a_venv_stands_alone(tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", venv])
    # Nothing of the in-place build may leak in: no PYTHONPATH.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    run([venv / "bin" / "pip", "install", "--no-build-isolation", "."], cwd=ROOT, env=env)

    # From an unrelated folder, the venv's Python finds the installed package and its native parts.
    check = (
        "import deltatune, os\n"
        "print(os.path.realpath(deltatune.__file__))\n"
        "print(os.path.realpath(deltatune._deltatune.__file__))\n"
        "print(deltatune.__version__)\n"
        f"tok = deltatune.load_tokenizer({BERT!r})\n"
        "print(tok.encode('a great film'))\n"
    )
    out = run([venv / "bin" / "python", "-c", check], cwd=tmp_path, env=env).splitlines()
    site = os.path.realpath(venv)
    assert out[0].startswith(site) and out[1].startswith(site), out
    assert out[2] == run([sys.executable, "-c", "import deltatune; print(deltatune.__version__)"]).strip()
    assert out[3].startswith("[")
    # The shared libraries it loads: none from this repository's build folders.
    libs = run(["ldd", out[1]])
    assert str(ROOT / "build") not in libs, libs

    # The suite's model and delta tests, against the installed package.
    tests = ROOT / "python" / "tests"
    run([venv / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
         tests / "test_model.py", tests / "test_deltas.py"], cwd=tmp_path, env=env)
