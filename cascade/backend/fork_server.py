"""The pool's fork server, which can be started before its caller's heavy imports.

A pool's workers are forked from multiprocessing's fork server, which first imports what they
need (torch, diffusers and the model code: about 7 s of one core on a 2-core box). Started
before its caller imports the same modules (``python app.py`` imports torch, diffusers and Gradio:
some 15 s), it imports them on the other core meanwhile, and the pool's first start then forks
workers that are ready at once. Standard library only, so importing this module costs nothing.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import forkserver

# What a Service's pool worker imports: the pool itself and the loader of every preset
# (cascade.model.presets.PresetLoader), named so that this module imports neither.
WORKER_MODULES = ("cascade.backend.pool", "cascade.model.presets")


def start_fork_server(modules: tuple[str, ...] = WORKER_MODULES) -> None:
    """Start the fork server (if it is not running) with ``modules`` imported before it forks."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(modules))
    forkserver.ensure_running()
