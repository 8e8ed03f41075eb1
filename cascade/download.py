"""``python -m cascade download PRESET [--cache-dir DIR]``: a Hub preset's files, fetched ahead of time.

What a Space does at build time (the README's ``preload_from_hub``), for any other machine: every
file the preset needs (``HubPreset.files()``) is fetched through huggingface_hub's
``snapshot_download`` with exactly those files as its allow patterns, so its progress bars show,
files already in the cache are not fetched again, and a download that was interrupted resumes where
it stopped when the command runs again. The missing files are first looked up on the Hub, one
request each, as the loaders do: an offline machine (``HF_HUB_OFFLINE``), a gated repository or an
absent file fails in one line before anything is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from huggingface_hub import constants, snapshot_download

from .model.checkpoints import HUB_PRESETS, HubPreset
from .model.hub import HubFile, by_repo, lookup_problems, missing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("preset", choices=list(HUB_PRESETS), help="the Hub preset whose files to fetch")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="a Hugging Face cache folder (default: the Hub cache, HF_HUB_CACHE); to run from it, "
                             "set HF_HUB_CACHE to it")


def download(preset: HubPreset, cache_dir: Path | None = None) -> list[HubFile]:
    """Fetch what the cache lacks of ``preset``'s files; returns the files fetched now.
    ValueError, one line, when they cannot be had; RuntimeError when a download breaks off."""
    files = preset.files()
    absent = missing(files, cache_dir)
    if not absent:
        return []
    problems = lookup_problems(absent)
    if problems:
        raise ValueError(f"cannot download {preset.name}: {'; '.join(p.splitlines()[0] for p in problems)} "
                         f"({len(absent)} of its {len(files)} files are not in {cache_dir or constants.HF_HUB_CACHE})")
    for repo, repo_files in by_repo(absent).items():
        try:
            snapshot_download(repo, allow_patterns=[f.filename for f in repo_files], cache_dir=cache_dir)
        except Exception as error:  # noqa: BLE001 - network, disk or Hub: one line, not a library's trace
            detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise RuntimeError(f"downloading {repo} for {preset.name} failed ({type(error).__name__}: {detail}); "
                               "run the command again: it resumes where it stopped") from None
    still = missing(files, cache_dir)
    if still:
        raise RuntimeError(f"{still[0]} is not in the cache after its download; run the command again")
    return absent


def main(args: argparse.Namespace) -> int:
    preset = HUB_PRESETS[args.preset]
    fetched = download(preset, args.cache_dir)
    where = args.cache_dir or constants.HF_HUB_CACHE
    done = f"{len(fetched)} downloaded now" if fetched else "all were there already"
    print(f"{preset.name}: its {len(preset.files())} files are in {where} ({done})")
    if args.cache_dir is not None:
        print(f"to run from there: HF_HUB_CACHE={args.cache_dir} python app.py")
    return 0
