"""`pip install .` (issue 22): the wheel holds every file of the package, the bundled model folders
among them, and the `cascade` command; installed on its own, away from the repository, the
package runs: `cascade --help`, its bundled model is there, and `bench --device cuda` reaches the
package's own GPU bench (an installed cascade has no benchmarks/ to import)."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD_FILES = ("pyproject.toml", "README.md", "requirements.txt")  # what the build reads besides cascade/
NOT_PACKAGED = shutil.ignore_patterns("__pycache__", "*.pyc")
PIP_TIMEOUT_S = 300  # a hung build fails the test instead of holding up the suite


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args, "--no-deps", "--no-index", "--no-build-isolation", "-q"],
                   check=True, timeout=PIP_TIMEOUT_S)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the package's files (a build writes build/ and *.egg-info next
    to its sources: the worktree stays as it is)."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_FILES:
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "cascade", source / "cascade", ignore=NOT_PACKAGED)
    out = tmp_path_factory.mktemp("wheel")
    pip("wheel", "-w", str(out), str(source))
    (built,) = out.glob("cascade-*.whl")
    return built


def package_files() -> set[str]:
    """Every file under cascade/ (Python and data), as the wheel names them."""
    root = REPO / "cascade"
    return {path.relative_to(REPO).as_posix() for path in root.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"}


def test_the_wheel_holds_every_file_of_the_package_and_the_cascade_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = configparser.ConfigParser()
        scripts.read_string(archive.read(entry_points).decode())
    assert package_files() - names == set()
    assert {"cascade/weights/tiny-shapes/transformer.safetensors", "cascade/weights/tiny-shapes/plans.json",
            "cascade/bench_gpu.py"} <= names
    assert [n for n in names if n.split("/")[0] in ("benchmarks", "tests", "app.py", "examples")] == []
    assert dict(scripts["console_scripts"]) == {"cascade": "cascade.__main__:main"}


def test_the_installed_package_runs_on_its_own(wheel, tmp_path):
    site = tmp_path / "site"
    pip("install", "--target", str(site), str(wheel))
    # Only the installed copy is importable: not the repository (cwd, PYTHONPATH), and no GPU.
    env = {**os.environ, "PYTHONPATH": str(site), "CUDA_VISIBLE_DEVICES": ""}

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)

    shown = run(str(site / "bin" / "cascade"), "--help")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: cascade ")  # not "python -m cascade", which is what -m shows
    assert all(command in shown.stdout for command in ("generate", "compare", "bench", "eval", "train", "convert"))
    found = run(sys.executable, "-c", "import cascade.model.presets as p; print(p.__file__); print(p.available_models())")
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith(str(site / "cascade")) and "'tiny-shapes'" in found.stdout
    bench = run(str(site / "bin" / "cascade"), "bench", "--device", "cuda", "--json", str(tmp_path / "gpu.json"))
    # the package's GPU bench, reached and refusing at once on a machine without CUDA
    assert bench.returncode == 2 and bench.stderr.startswith("error: --device cuda was asked for"), bench.stderr
