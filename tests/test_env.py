"""``python -m cascade env``, as a user runs it: a separate process, offline."""

import os
import subprocess
import sys

import pytest

from cascade.env import LIBRARIES
from cascade.model.checkpoints import HUB_PRESETS
from cascade.model.presets import available_models
from hub_standins import FakeHubCache, write_project_repos, write_wan_repo


def run_env(hub_cache) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache)}
    return subprocess.run([sys.executable, "-m", "cascade", "env"], capture_output=True, text=True, timeout=300,
                          env=environment)


def model_lines(stdout: str) -> dict[str, str]:
    """The Models section: model name -> the rest of its line."""
    section = stdout.split("Models:\n", 1)[1].split("\n", 1 + len(available_models()))[: len(available_models())]
    return dict(line.strip().split(": ", 1) for line in section)


@pytest.fixture(scope="module")
def empty_cache_report(tmp_path_factory):
    return run_env(tmp_path_factory.mktemp("hub"))


def test_env_exits_0_offline_in_one_screen_without_a_traceback(empty_cache_report):
    done = empty_cache_report
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr and "unavailable" not in done.stdout
    assert len(done.stdout.splitlines()) <= 40


def test_env_names_the_machine_libraries_and_cache(empty_cache_report, tmp_path):
    out = empty_cache_report.stdout
    assert f"CPU cores: {len(os.sched_getaffinity(0))} usable" in out and " GiB" in out
    for name in LIBRARIES:
        assert f"\n  {name}: " in out
    assert "torch: " + __import__("torch").__version__ in out
    assert "Hub cache: " in out


def test_env_names_every_preset_with_its_status(empty_cache_report):
    lines = model_lines(empty_cache_report.stdout)
    assert list(lines) == available_models()
    assert lines["tiny-shapes"].startswith("runnable")
    for name in HUB_PRESETS:  # an empty cache: each says what it lacks
        assert lines[name].startswith("cannot run: ") and "not in the Hugging Face cache" in lines[name]


def test_env_tells_what_the_app_would_run(empty_cache_report):
    out = empty_cache_report.stdout.split("python app.py would run:\n", 1)[1]
    assert "model: tiny-shapes" in out  # no CUDA here
    assert "device: cpu" in out
    workers = len(os.sched_getaffinity(0))
    backend = f"distributed pool of {workers} workers" if workers >= 2 else "batched on one device"
    assert f"backend: {backend}" in out
    assert "\n  plan: W" in out and " ticks, at most " in out


def test_env_shows_a_downloaded_preset_as_runnable(tmp_path):
    cache = FakeHubCache(tmp_path / "hub")
    write_wan_repo(cache)
    write_project_repos(cache)
    done = run_env(cache.root)
    assert done.returncode == 0, done.stderr
    lines = model_lines(done.stdout)
    assert all(lines[name].startswith("runnable: downloaded") for name in HUB_PRESETS), lines
