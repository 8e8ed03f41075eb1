"""What the tests of the public demo share: a small demo launched on a free port, its API called
as any HTTP client may call it, and what a run could leave behind (processes, shared-memory
files, listening ports).

The small demo is the real page (``app.build_demo``) on a Service bounded to 2 blocks × 2 steps:
tiny-shapes, 2 blocks × 1 step, one device batched by default; "pool" is a pool of 2 workers of
one thread each. A pool's run fails after ``TICK_TIMEOUT_S`` without a tick (a hung worker), and
``QUEUE_SIZE`` comparisons may wait behind the one that runs.
"""

from __future__ import annotations

import json
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

import app
from cascade.service import GenerateRequest, Limits, Service

LIMITS = Limits(blocks=2, steps=2)
DEFAULTS = GenerateRequest(prompt="a red circle moving right", model="tiny-shapes", blocks=2, steps=1, window=2,
                           stride=1, executor="batched")
TICK_TIMEOUT_S = 5.0
QUEUE_SIZE = 8
# the compare endpoint's parameters after the prompt, in order, with the small demo's defaults
API_DEFAULTS = dict(preset="tiny-shapes", blocks=2, steps=1, backend="batched", workers=2, window=2, stride=1,
                    variant="causal", recache=True, bwcache=False, bwcache_threshold=0.15, seed=0, prompt_schedule="",
                    runs="serial,cascade")
SHARED_MEMORY = Path("/dev/shm")


@dataclass
class Demo:
    url: str
    service: Service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def small_demo(output_root: Path):
    """The small demo, launched in this process on a free port, closed (Service too) on exit."""
    with Service(output_root=output_root, ttl_s=3600, device="cpu", limits=LIMITS,
                 tick_timeout_s=TICK_TIMEOUT_S) as service:
        demo = app.build_demo(app.page_backend(service, defaults=DEFAULTS), queue_size=QUEUE_SIZE)
        demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                    **app.launch_options(service))
        try:
            yield Demo(demo.local_url, service)
        finally:
            demo.close()


def api_values(prompt, **changes) -> list:
    """The compare endpoint's inputs, positional, as the HTTP API takes them."""
    unknown = set(changes) - set(API_DEFAULTS)
    assert not unknown, unknown
    return [prompt, *{**API_DEFAULTS, **changes}.values()]


def call_compare(url: str, values: list, timeout_s: float = 120) -> tuple[str, object]:
    """Call ``compare`` as any HTTP client may: ``json.dumps`` writes NaN and Infinity, which
    gradio_client refuses to send. Returns the last event of the run's stream, decoded:
    ("complete", outputs) or ("error", message); the message is None when the app raised
    something other than a ``gr.Error`` (Gradio then shows no detail)."""
    endpoint = url.rstrip("/") + "/gradio_api/call/compare"
    posted = httpx.post(endpoint, content=json.dumps({"data": values}), timeout=timeout_s,
                        headers={"content-type": "application/json"})
    posted.raise_for_status()
    with httpx.stream("GET", f"{endpoint}/{posted.json()['event_id']}", timeout=timeout_s) as reply:
        text = "".join(reply.iter_text())
    events = [dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
              for block in text.split("\n\n")]
    last = [event for event in events if event.get("event") in ("complete", "error")][-1]
    data = json.loads(last.get("data") or "null")
    if last["event"] == "error":  # Gradio sends a gr.Error as {"error": message, "title": ..., ...}
        return "error", data.get("error") if isinstance(data, dict) else data
    return "complete", data


def shared_memory_mapped(processes: list[psutil.Process]) -> set[int]:
    """The inodes of the shared-memory files ``processes`` map: their queues' semaphores and the
    pool's K/V slots. By inode, not name: a semaphore is mapped under a temporary name and then
    linked to its own, and another program's files must not count."""
    inodes = set()
    for process in processes:
        try:
            maps = Path(f"/proc/{process.pid}/maps").read_text()
        except OSError:  # gone already
            continue
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(f"{SHARED_MEMORY}/"):
                inodes.add(int(fields[4]))
    return inodes


def left_in_shared_memory(inodes: set[int], timeout_s: float = 10.0) -> list[str]:
    """The files in shared memory of those with ``inodes`` that are still there after
    ``timeout_s`` (or none, as soon as all have gone): a stopped queue's semaphores go when its
    feeder thread has finished, a moment after the queue is closed."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = []
        for path in SHARED_MEMORY.iterdir() if SHARED_MEMORY.is_dir() else []:
            try:
                if path.stat().st_ino in inodes:
                    left.append(path.name)
            except FileNotFoundError:  # another program's, removed meanwhile
                continue
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def listening_ports(process: psutil.Process | None = None) -> set[int]:
    """The TCP ports ``process`` (default: this one) listens on."""
    process = process or psutil.Process()
    return {c.laddr.port for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN}


def exists(process: psutil.Process) -> bool:
    """Whether ``process`` is still there, a zombie (exited, not reaped by its parent) included."""
    try:
        process.status()
    except psutil.NoSuchProcess:
        return False
    return True


def still_there(processes: list[psutil.Process], timeout_s: float = 15.0) -> list[psutil.Process]:
    """Those of ``processes`` that are still there after ``timeout_s`` (or none, as soon as all
    have gone): an orphan's parent is the init process, which reaps it a moment later."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [p for p in processes if exists(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def zombie_children() -> list[psutil.Process]:
    """This process's descendants that exited and were not reaped (by it, or by a forkserver)."""
    zombies = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child)
        except psutil.NoSuchProcess:
            continue
    return zombies
