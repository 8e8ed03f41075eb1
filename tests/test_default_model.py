"""The model a machine runs by default: the best downloaded real preset on CUDA, else tiny-shapes."""

import pytest
import torch

from cascade.model.checkpoints import HUB_PRESETS
from cascade.model.presets import PREFERRED_PRESETS, default_model_name
from hub_standins import UPSTREAM, FakeHubCache, use_offline, write_project_repos, write_wan_repo

GiB = 2**30


@pytest.fixture
def cuda(monkeypatch):
    """A CUDA machine with an 80 GB GPU, as far as the choice can tell (no kernel runs)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 * GiB, 80 * GiB))


def standin_cache(root, without: tuple[str, ...] = ()) -> FakeHubCache:
    """Every preset downloaded, except the generator files of ``without``."""
    cache = FakeHubCache(root / "hub")
    write_wan_repo(cache)
    write_project_repos(cache)
    for name in without:
        cache.path(UPSTREAM[name].repo, UPSTREAM[name].checkpoint).unlink()
    return cache


def test_the_preference_covers_every_preset_self_forcing_first():
    assert sorted(PREFERRED_PRESETS) == sorted(HUB_PRESETS) and PREFERRED_PRESETS[0] == "self-forcing-1.3b"


def test_cuda_with_presets_downloaded_gives_self_forcing(cuda, tmp_path, monkeypatch):
    use_offline(monkeypatch, standin_cache(tmp_path))
    assert default_model_name() == "self-forcing-1.3b"


@pytest.mark.parametrize("downloaded", PREFERRED_PRESETS[1:])
def test_cuda_gives_the_first_downloaded_preset_in_order(cuda, tmp_path, monkeypatch, downloaded):
    others = tuple(name for name in PREFERRED_PRESETS if name != downloaded)
    use_offline(monkeypatch, standin_cache(tmp_path, without=others))
    assert default_model_name() == downloaded


def test_cuda_with_nothing_downloaded_gives_tiny_shapes(cuda, tmp_path, monkeypatch):
    use_offline(monkeypatch, FakeHubCache(tmp_path / "empty"))
    assert default_model_name() == "tiny-shapes"


def test_cuda_whose_gpu_is_too_small_gives_tiny_shapes(cuda, tmp_path, monkeypatch):
    use_offline(monkeypatch, standin_cache(tmp_path))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0, 80 * GiB))
    assert default_model_name() == "tiny-shapes"


def test_no_cuda_gives_tiny_shapes_even_with_presets_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    use_offline(monkeypatch, standin_cache(tmp_path))
    assert default_model_name() == "tiny-shapes"
