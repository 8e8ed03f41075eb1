"""The Space's configuration (the README's front matter): what it fetches at build time."""

from pathlib import Path

import yaml

from cascade.model.checkpoints import HUB_PRESETS
from cascade.model.presets import PREFERRED_PRESETS

README = Path(__file__).resolve().parent.parent / "README.md"


def front_matter() -> dict:
    """The YAML block between the README's first two ``---`` lines, as Spaces reads it."""
    _, block, _ = README.read_text().split("---\n", 2)
    return yaml.safe_load(block)


def preloaded() -> set[tuple[str, str]]:
    """(repository, file) of every ``preload_from_hub`` entry: ``REPO FILE,FILE,...``. An entry
    without files would fetch a whole repository; one with a revision would be stored under that
    commit, where the loaders (which ask the cache for the main revision) would not look."""
    files = set()
    for entry in front_matter()["preload_from_hub"]:
        repo, names = entry.split(" ")  # exactly two fields: no whole repository, no pinned commit
        files |= {(repo, name) for name in names.split(",")}
    return files


def test_preload_from_hub_names_exactly_the_files_the_default_real_preset_needs():
    preset = HUB_PRESETS[PREFERRED_PRESETS[0]]
    assert preset.name == "self-forcing-1.3b"
    assert preloaded() == {(f.repo, f.filename) for f in preset.files()}
    # the generator file and every part of the Wan repository: configuration, umT5's five shards and
    # their index, the tokenizer and the VAE
    repos = {repo for repo, _ in preloaded()}
    assert repos == {"gdhe17/Self-Forcing", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"}
    wan = sorted(name for repo, name in preloaded() if repo == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    assert sum(name.startswith("text_encoder/model-0000") for name in wan) == 5
    assert {"transformer/config.json", "vae/diffusion_pytorch_model.safetensors", "tokenizer/tokenizer.json"} <= set(wan)
