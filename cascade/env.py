"""``python -m cascade env``: this machine as the project sees it, in one screen, offline.

Like ``diffusers-cli env`` or ``accelerate env``, for pasting into a bug report: the machine, the
library versions and the Hub cache, every model's status here, and the model, backend and plan
``python app.py`` would start with. Nothing here asks the network; a part that cannot be told
says why in its line instead of ending the report.
"""

from __future__ import annotations

import argparse
from importlib import metadata

LIBRARIES = ("torch", "diffusers", "gradio", "transformers", "huggingface_hub")
GiB = 2**30


def machine_lines() -> list[str]:
    import psutil
    import torch

    from .backend.pool import usable_cores

    lines = [f"CPU cores: {usable_cores()} usable ({psutil.cpu_count()} in all); "
             f"RAM: {psutil.virtual_memory().total / GiB:.1f} GiB"]
    if not torch.cuda.is_available():
        return lines + ["GPUs: none (CUDA not available)"]
    for index in range(torch.cuda.device_count()):
        gpu = torch.cuda.get_device_properties(index)
        lines.append(f"GPU {index}: {gpu.name}, {gpu.total_memory / GiB:.1f} GiB")
    return lines


def library_lines() -> list[str]:
    from huggingface_hub import constants

    return [f"{name}: {_version(name)}" for name in LIBRARIES] + [f"Hub cache: {constants.HF_HUB_CACHE}"]


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def preset_lines() -> list[str]:
    """One line per model: runnable (and how), or the first line of what it needs."""
    from .model.presets import preset_status

    return [f"{p.name}: {'runnable' if p.runnable else 'cannot run'}: {p.reason.splitlines()[0]}"
            for p in preset_status()]


def app_lines() -> list[str]:
    """What ``python app.py`` would start with here: its Service's default request and its plan."""
    from .model.presets import default_model_name
    from .service import Service

    with Service() as service:
        request = service.default_request()
        plan = service.plan(request)
    backend = (f"distributed pool of {request.workers} workers" if request.executor == "distributed"
               else f"{request.executor} on one device")
    return [f"model: {request.model or default_model_name()}", f"device: {service.device}; backend: {backend}",
            f"plan: {plan['summary']}"]


SECTIONS = (("Machine", machine_lines), ("Libraries", library_lines), ("Models", preset_lines),
            ("python app.py would run", app_lines))


def report() -> str:
    from .service import first_line

    out = []
    for title, lines in SECTIONS:
        out.append(f"{title}:")
        try:
            out += [f"  {line}" for line in lines()]
        except Exception as error:  # noqa: BLE001 - the report goes on: the failure is part of it
            out.append(f"  unavailable: {type(error).__name__}: {first_line(error)}")
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    print(report())
    return 0
