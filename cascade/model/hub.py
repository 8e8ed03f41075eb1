"""Files from the Hugging Face Hub, through its cache, with one clear error when they cannot be had.

Everything goes through ``huggingface_hub``, so ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``
and ``HF_TOKEN`` work as they do for every other library. The cache is asked first (no network);
only files missing from it are looked up on the Hub, each with one request and no retries, so an
offline machine, a gated repository or an absent file is reported within seconds, before anything
is downloaded or loaded. The report names every missing file with the command that fetches it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, errors, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub import try_to_load_from_cache

INDEX_SUFFIX = ".index.json"


@dataclass(frozen=True)
class HubFile:
    """One file of one Hub repository (model repositories, main revision)."""

    repo: str
    filename: str

    @property
    def command(self) -> str:
        """The command that fetches it into the cache; an index's command fetches its shards too."""
        if self.filename.endswith(INDEX_SUFFIX):
            return f'hf download {self.repo} --include "{Path(self.filename).parent.as_posix()}/*"'
        return f"hf download {self.repo} {self.filename}"

    def __str__(self) -> str:
        return f"{self.repo}/{self.filename}"


def cached(file: HubFile, cache_dir: str | Path | None = None) -> Path | None:
    """Where ``file`` is in the local cache (default: the Hub cache), or None; never touches the network."""
    found = try_to_load_from_cache(file.repo, file.filename, cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) else None


def missing(files: list[HubFile], cache_dir: str | Path | None = None) -> list[HubFile]:
    return [f for f in files if cached(f, cache_dir) is None]


def fetch(files: list[HubFile], purpose: str) -> dict[HubFile, Path]:
    """Local paths of ``files``, downloading what the cache lacks; all or a ValueError.

    ``purpose`` names what needs the files (a preset) in the error message."""
    absent = missing(files)
    if absent:
        problems = lookup_problems(absent)
        if problems:
            raise ValueError(missing_files_message(purpose, absent, problems))
        for file in absent:
            _download(file, purpose)
    return {f: cached(f) for f in files}


def shards_of(index: Path, index_file: HubFile) -> list[HubFile]:
    """The weight files a ``*.index.json`` lists (``index``: where ``index_file`` is on disk)."""
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{index_file} is not a readable weight index ({error}); "
                         f"fetch it again: {index_file.command}") from None
    folder = Path(index_file.filename).parent.as_posix()
    return [HubFile(index_file.repo, f"{folder}/{name}") for name in names]


def missing_files_message(purpose: str, absent: list[HubFile], problems: list[str]) -> str:
    """One message: why the files cannot be had, which they are, and the commands that fetch them."""
    grouped = by_repo(absent)
    lines = [f"{purpose} needs {len(absent)} file(s) that are not in the Hugging Face cache "
             f"({constants.HF_HUB_CACHE}): " + "; ".join(problems) + "."]
    for repo, files in grouped.items():
        lines.append(f"  {repo}: {', '.join(f.filename for f in files)}")
    lines.append("Fetch them where the Hub can be reached (then copy the cache here, or point HF_HOME at it):")
    lines += [f"  {command}" for command in _commands(grouped)]
    return "\n".join(lines)


def by_repo(files: list[HubFile]) -> dict[str, list[HubFile]]:
    """``files`` grouped by repository, in order."""
    grouped: dict[str, list[HubFile]] = {}
    for file in files:
        grouped.setdefault(file.repo, []).append(file)
    return grouped


def _commands(grouped: dict[str, list[HubFile]]) -> list[str]:
    """One ``hf download REPO FILE...`` per repository, plus one per index (a whole folder)."""
    commands = []
    for repo, files in grouped.items():
        plain = [f.filename for f in files if not f.filename.endswith(INDEX_SUFFIX)]
        if plain:
            commands.append(f"hf download {repo} {' '.join(plain)}")
        commands += [f.command for f in files if f.filename.endswith(INDEX_SUFFIX)]
    return commands


class _Unreachable(Exception):
    """The Hub cannot be asked at all: every other file would fail the same way."""


def lookup_problems(absent: list[HubFile]) -> list[str]:
    """Why absent files cannot be downloaded (empty: all can be). One request per file, none
    once the Hub has proved unreachable, so an offline machine answers at once."""
    if constants.HF_HUB_OFFLINE:
        return ["HF_HUB_OFFLINE is set, so nothing is downloaded"]
    problems = []
    for file in absent:
        try:
            problem = _lookup_problem(file)
        except _Unreachable as error:
            return problems + [str(error)]
        if problem is not None:
            problems.append(problem)
    return problems


def _lookup_problem(file: HubFile) -> str | None:
    try:
        get_hf_file_metadata(hf_hub_url(file.repo, file.filename))
    except errors.GatedRepoError:
        return (f"{file.repo} is gated: accept its terms on its Hub page, then log in with `hf auth login` "
                "or set HF_TOKEN")
    except errors.RepositoryNotFoundError:
        return f"{file.repo} does not exist on the Hub (or is private: log in with `hf auth login`)"
    except errors.RevisionNotFoundError:
        return f"{file.repo} has no main revision"
    except errors.EntryNotFoundError:
        return f"{file.repo} has no file {file.filename}"
    except Exception as error:  # noqa: BLE001 - whatever the HTTP client raises: no answer from the Hub
        raise _Unreachable(f"the Hub cannot be reached from here ({type(error).__name__}: {error})") from None
    return None


def _download(file: HubFile, purpose: str) -> None:
    try:
        hf_hub_download(file.repo, file.filename)
    except Exception as error:  # noqa: BLE001 - network, disk or Hub: one message, not a library's trace
        raise ValueError(f"{purpose}: downloading {file} failed ({type(error).__name__}: {error}); "
                         f"try again with: {file.command}") from None
