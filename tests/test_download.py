"""``python -m cascade download PRESET``: a Hub preset's files fetched ahead of time. Nothing here
touches the network: offline, or huggingface_hub's download and look-ups patched."""

import os
import subprocess
import sys

import pytest

from cascade import download
from cascade.__main__ import main
from cascade.model.checkpoints import HUB_PRESETS
from hub_standins import FakeHubCache

PRESET = HUB_PRESETS["longlive-1.3b"]  # a generator, a LoRA and the Wan parts: three kinds of file


def test_offline_it_fails_in_one_line_before_fetching_anything(tmp_path):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home")}
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):  # HF_HOME decides where the cache is
        environment.pop(variable, None)
    done = subprocess.run([sys.executable, "-m", "cascade", "download", "self-forcing-1.3b"], capture_output=True,
                          text=True, timeout=300, env=environment)
    files = len(HUB_PRESETS["self-forcing-1.3b"].files())
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: cannot download self-forcing-1.3b: HF_HUB_OFFLINE is set, so nothing is downloaded ({files} of its "
        f"{files} files are not in {tmp_path / 'home' / 'hub'})"]
    assert not (tmp_path / "home" / "hub").exists() or not any((tmp_path / "home" / "hub").iterdir())


@pytest.fixture
def patched_hub(tmp_path, monkeypatch):
    """A cache holding some of the preset's files, a Hub that answers every look-up, and a
    ``snapshot_download`` that writes what it is asked for into the cache (and records the asks)."""
    cache = FakeHubCache(tmp_path / "cache")
    files = PRESET.files()
    for file in files[:3]:
        cache.path(file.repo, file.filename).write_bytes(b"there already")
    asked = []

    def snapshot_download(repo, allow_patterns, cache_dir):
        asked.append((repo, sorted(allow_patterns), cache_dir))
        for name in allow_patterns:
            cache.path(repo, name).write_bytes(b"downloaded")
        return str(cache.snapshot(repo))

    monkeypatch.setattr(download, "lookup_problems", lambda absent: [])
    monkeypatch.setattr(download, "snapshot_download", snapshot_download)
    return cache, files, asked


def test_it_asks_each_repository_for_exactly_the_missing_files_then_nothing(patched_hub, capsys):
    cache, files, asked = patched_hub
    assert main(["download", PRESET.name, "--cache-dir", str(cache.root)]) == 0
    expected = {}
    for file in files[3:]:
        expected.setdefault(file.repo, []).append(file.filename)
    assert sorted(asked) == sorted((repo, sorted(names), cache.root) for repo, names in expected.items())
    assert {repo for repo, _, _ in asked} == {PRESET.repo, "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"}
    assert f"{PRESET.name}: its {len(files)} files are in {cache.root} ({len(files) - 3} downloaded now)" in \
        capsys.readouterr().out
    asked.clear()
    assert main(["download", PRESET.name, "--cache-dir", str(cache.root)]) == 0
    assert asked == [] and "(all were there already)" in capsys.readouterr().out


def test_a_download_that_breaks_off_fails_in_one_line_and_says_to_run_again(patched_hub, monkeypatch, capsys):
    cache, _, _ = patched_hub

    def broken(repo, allow_patterns, cache_dir):
        raise OSError("Connection reset by peer\nwith a long trace after it")

    monkeypatch.setattr(download, "snapshot_download", broken)
    assert main(["download", PRESET.name, "--cache-dir", str(cache.root)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: downloading ") and "(OSError: Connection reset by peer)" in line
    assert line.endswith("run the command again: it resumes where it stopped")


def test_a_model_that_is_not_on_the_hub_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["download", "tiny-shapes"])
    assert exit_.value.code == 2 and "invalid choice: 'tiny-shapes'" in capsys.readouterr().err
