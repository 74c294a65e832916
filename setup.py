"""Builds the Python module with CMake (the project's own build, target deltatune_python) and packages
build/pip/cmake/python/deltatune: the extension, libdeltatune beside it, __init__.py and the type stub.

    python3 -m venv --system-site-packages .venv && .venv/bin/pip install --no-build-isolation .

Environment: DELTATUNE_JOBS (parallel compile jobs, default: all cores), DELTATUNE_CMAKE_FLAGS (more
-D flags, e.g. -DCMAKE_CXX_COMPILER_LAUNCHER=ccache).
"""
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).resolve().parent
BUILD = ROOT / "build" / "pip"


def version():
    text = (ROOT / "CMakeLists.txt").read_text()
    return re.search(r"project\(deltatune VERSION ([0-9.]+)", text).group(1)


class CMakeBuild(build_ext):
    """Configures and builds the module with CMake, then copies the package next to setuptools' output."""

    def build_extension(self, ext):
        cmake_build = BUILD / "cmake"
        flags = [
            "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", f"-DPython3_EXECUTABLE={sys.executable}",
            "-DDELTATUNE_PYTHON=ON", "-DDELTATUNE_PYTHON_WHEEL=ON", "-DDELTATUNE_TESTS=OFF",
            "-DDELTATUNE_BENCH=OFF", "-DDELTATUNE_CUDA=OFF",
        ]
        if shutil.which("ccache"):
            flags.append("-DCMAKE_CXX_COMPILER_LAUNCHER=ccache")
        flags += shlex.split(os.environ.get("DELTATUNE_CMAKE_FLAGS", ""))
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(cmake_build), *flags], check=True)
        jobs = os.environ.get("DELTATUNE_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", str(cmake_build), "-j", jobs, "--target", "deltatune_python"], check=True)
        built = cmake_build / "python" / "deltatune"
        target = pathlib.Path(self.get_ext_fullpath(ext.name)).parent
        target.mkdir(parents=True, exist_ok=True)
        for item in built.iterdir():
            if item.suffix in (".so", ".py", ".pyi", ".typed") or ".so." in item.name:
                shutil.copy2(item, target / item.name)


setup(
    version=version(),
    packages=["deltatune"],
    package_dir={"deltatune": "python/deltatune"},
    package_data={"deltatune": ["*.pyi", "py.typed"]},
    ext_modules=[Extension("deltatune._deltatune", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    options={"build": {"build_base": str(BUILD / "setuptools")}},
    zip_safe=False,
)
