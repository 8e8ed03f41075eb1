"""Faults (issue 15): a worker killed or hung in the middle of a run, and a parent interrupted.

Each fails the run with one clear line, within seconds (a killed worker within 10 s), naming the
worker and what happened; the next run succeeds on a fresh pool; and nothing is left behind: no
process (zombies included), no shared-memory file, no listening port. Through the Service,
through the app's API (the small demo of ``demo_support``), and in subprocesses through the
command line and ``python app.py`` (Ctrl-C). The bar, this file's first test 10 times out of 10:

    for i in $(seq 10); do python -m pytest -q tests/test_faults.py -k killed_worker_fails || break; done
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from cascade.service import GenerateRequest, Service, first_line
from demo_support import (TICK_TIMEOUT_S, api_values, call_compare, free_port, left_in_shared_memory,
                          listening_ports, shared_memory_mapped, still_there, zombie_children)

REPO = Path(__file__).resolve().parent.parent
POOL = GenerateRequest(prompt="a red circle moving right", model="random-tiny", mode="cascade", blocks=3, steps=2,
                       window=2, stride=1, executor="distributed", workers=2, threads=1)
KILLED_BAR_S = 10  # the README's promise: a killed worker fails its run within 10 s (the one time bound asserted)
HUNG_S = 2.0  # the Service tests' tick timeout: a hung worker is found this long after the last tick


def mapped_here() -> set[int]:
    me = psutil.Process()
    return shared_memory_mapped([me, *me.children(recursive=True)])


class Leftovers:
    """What this process maps in shared memory and listens on, beyond what it did before a test."""

    def __init__(self):
        self.mapped, self.ports = mapped_here(), listening_ports()
        self.seen: set[int] = set()

    def since(self) -> set[int]:
        """The shared memory mapped now that was not before (remembered for the final check)."""
        new = mapped_here() - self.mapped
        self.seen |= new
        return new

    def assert_none(self) -> None:
        assert left_in_shared_memory(self.seen) == []
        assert listening_ports() - self.ports == set()
        assert zombie_children() == []


@pytest.fixture
def leftovers():
    """After the test (its Service closed): no shared-memory file, port or zombie of its own left."""
    watch = Leftovers()
    yield watch
    watch.assert_none()


@pytest.fixture
def service(tmp_path, leftovers):
    with Service(output_root=tmp_path, device="cpu", tick_timeout_s=HUNG_S) as service:
        yield service
        leftovers.since()  # what its pools hold, before it closes them


def workers_of(pool) -> list[psutil.Process]:
    return [psutil.Process(pid) for pid in pool.worker_pids]


def only_pool(service: Service):
    (pool,) = service._pools.values()
    return pool


def until_the_pool_sees_it_gone(pool, rank: int, timeout_s: float = 10) -> None:
    """A killed worker is gone for its pool once the forkserver that forked it reaped it and said so."""
    deadline = time.monotonic() + timeout_s
    while pool._pool.processes[rank].is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.01)


# --- through the Service ----------------------------------------------------------------------------


# the tokens placement: every worker in every forward's collectives, none of them waits on K/V slots
@pytest.mark.parametrize("placement", ["blocks", "tokens"])
def test_a_killed_worker_fails_the_run_with_one_clear_line_and_the_next_run_succeeds(service, leftovers, placement):
    request = replace(POOL, placement=placement)
    first = service.generate(request, files=False)
    old, held = workers_of(only_pool(service)), leftovers.since()
    killed = []

    def kill_worker_1(fraction, message):
        if not killed:
            old[1].kill()
            killed.append(time.monotonic())

    with pytest.raises(RuntimeError) as raised:
        service.generate(request, progress=kill_worker_1, files=False)
    assert time.monotonic() - killed[0] < KILLED_BAR_S
    assert re.match(rf"distributed pool failed during run \d+: worker 1 \(pid {old[1].pid}, cpu\) died: "
                    r"killed by signal SIGKILL", first_line(raised.value))
    assert still_there(old) == [] and zombie_children() == []
    # the stopped pool's queues and K/V slots are gone from shared memory, and its store's port is closed
    assert held and left_in_shared_memory(held) == [] and listening_ports() == leftovers.ports

    again = service.generate(request, files=False)
    assert np.array_equal(again.frames, first.frames)
    assert {p.pid for p in workers_of(only_pool(service))}.isdisjoint(p.pid for p in old)


def test_a_hung_worker_fails_the_run_after_the_tick_timeout_and_the_next_run_succeeds(service, leftovers):
    first = service.generate(POOL, files=False)
    old, held = workers_of(only_pool(service)), leftovers.since()
    old[1].suspend()  # SIGSTOP: alive but silent, as a worker stuck in a driver call or a deadlock would be
    with pytest.raises(RuntimeError) as raised:
        service.generate(POOL, files=False)
    assert re.fullmatch(rf"distributed pool failed during run \d+: no tick finished within {HUNG_S:g} s "
                        r"\(tick_timeout_s\): a worker hung", first_line(raised.value))
    assert still_there(old) == []  # the stopped worker was killed too
    assert held and left_in_shared_memory(held) == []  # and the stopped pool's shared memory is gone

    again = service.generate(POOL, files=False)
    assert np.array_equal(again.frames, first.frames)


def test_a_worker_that_died_between_runs_is_replaced_before_the_next_run(service, leftovers):
    first = service.generate(POOL, files=False)
    old, held = workers_of(only_pool(service)), leftovers.since()
    old[0].kill()
    until_the_pool_sees_it_gone(only_pool(service), 0)
    again = service.generate(POOL, files=False)  # no error: nobody's run was in progress
    assert np.array_equal(again.frames, first.frames)
    assert held and left_in_shared_memory(held) == []  # the broken pool's shared memory went with it
    assert {p.pid for p in workers_of(only_pool(service))}.isdisjoint(p.pid for p in old) and still_there(old) == []


def test_closing_the_service_fails_a_run_in_progress_at_once_and_stops_every_worker(service, leftovers):
    service.generate(POOL, files=False)
    old, held = workers_of(only_pool(service)), leftovers.since()
    busy, failed = threading.Event(), []

    def long_run():
        try:
            service.generate(replace(POOL, blocks=16, steps=16), progress=lambda *_: busy.set(), files=False)
        except RuntimeError as error:
            failed.append(first_line(error))

    thread = threading.Thread(target=long_run)
    thread.start()
    assert busy.wait(timeout=60)
    service.close()  # what the app does when it shuts down
    thread.join(timeout=30)
    assert len(failed) == 1 and re.fullmatch(r"the distributed pool was closed during run \d+", failed[0])
    assert still_there(old) == []
    assert held and left_in_shared_memory(held) == []  # recorded while it ran: at teardown it is already closed


# --- through the app's API ------------------------------------------------------------------------


def test_the_page_reports_a_hung_worker_in_one_line_and_the_next_comparison_succeeds(small):
    values = api_values("a red circle moving right", backend="pool")
    assert call_compare(small.url, values)[0] == "complete"  # the pool is up
    pool = next(p for key, p in small.service._pools.items() if key[:2] == ("tiny-shapes", 2))
    old = workers_of(pool)
    old[1].suspend()
    kind, message = call_compare(small.url, values)
    assert kind == "error" and re.fullmatch(r"The backend failed: distributed pool failed during run \d+: no tick "
                                            rf"finished within {TICK_TIMEOUT_S:g} s \(tick_timeout_s\): a worker hung",
                                            message)
    assert still_there(old) == []
    assert call_compare(small.url, values)[0] == "complete"  # on a fresh pool
    workers_of(pool)[0].kill()  # between comparisons: the next one gets a whole pool again, with no error
    until_the_pool_sees_it_gone(pool, 0)
    assert call_compare(small.url, values)[0] == "complete"


# --- Ctrl-C and a killed worker from outside: the command line and `python app.py` -----------------------


# The CLI on a pool of two one-thread workers: ``generate`` runs the cascade alone (its progress is
# the pool's from the first tick), ``compare`` warms up, runs serial locally, then the cascade.
RUN = ["--prompt", "a red circle moving right", "--model", "random-tiny", "--window", "2", "--stride", "1",
       "--executor", "distributed", "--workers", "2", "--threads", "1"]
GENERATE = [sys.executable, "-m", "cascade", "generate", "--mode", "cascade", "--blocks", "16", "--steps", "16", *RUN]
COMPARE = [sys.executable, "-m", "cascade", "compare", "--blocks", "8", "--steps", "8", *RUN]


class Output:
    """A subprocess's stderr, collected as it comes (a progress line ends in a carriage return)."""

    def __init__(self, stream):
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.reader.start()

    def _read(self, stream) -> None:
        while chunk := os.read(stream.fileno(), 65536):
            self.chunks.append(chunk)

    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")

    def lines(self) -> list[str]:
        self.reader.join(timeout=10)
        return [line for line in re.split(r"[\r\n]", self.text()) if line.strip()]

    def progress(self) -> float:
        """The last progress figure the CLI printed (0 before the first)."""
        figures = re.findall(r"(\d+\.\d)% tick", self.text())
        return float(figures[-1]) if figures else 0.0


def environment(tmp_path: Path, **extra) -> dict:
    # TMPDIR: the default output root and Gradio's cache land in the test's folder, not in /tmp
    return {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path), **extra}


def start(command: list[str], env: dict) -> tuple[subprocess.Popen, Output]:
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    return process, Output(process.stderr)


def end(process: subprocess.Popen) -> None:
    """Whatever a failed test left running, gone (its whole session)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def until(condition, process: subprocess.Popen, output: Output, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None and time.monotonic() < deadline, output.text()[-3000:]
        time.sleep(0.02)


def family_of(pid: int) -> tuple[list[psutil.Process], list[psutil.Process], set[int]]:
    """The process and all under it, the pool's workers among them (forked by the forkserver, so
    grandchildren, where the forkserver and the resource tracker are children), and the
    shared memory they map."""
    top = psutil.Process(pid)
    family = [top, *top.children(recursive=True)]
    return family, [p for p in family[1:] if p.ppid() != pid], shared_memory_mapped(family)


def test_the_cli_reports_a_killed_worker_in_one_line_and_leaves_nothing(tmp_path):
    process, output = start([*GENERATE, "--out", str(tmp_path / "out")], environment(tmp_path))
    try:
        until(lambda: output.progress() > 0, process, output)  # the run is on the pool
        family, workers, held = family_of(process.pid)
        workers[1].kill()
        killed = time.monotonic()
        process.wait(timeout=60)
        took = time.monotonic() - killed
    finally:
        end(process)
    errors = [line for line in output.lines() if line.startswith("error:")]
    assert process.returncode == 1 and len(errors) == 1, output.text()[-3000:]
    assert re.match(rf"error: distributed pool failed during run \d+: worker \d \(pid {workers[1].pid}, cpu\) died: "
                    "killed by signal SIGKILL", errors[0])
    assert "Traceback" not in output.text() and took < KILLED_BAR_S
    assert still_there(family) == [] and held and left_in_shared_memory(held) == []


def test_ctrl_c_on_the_cli_stops_its_workers_and_leaves_nothing(tmp_path):
    process, output = start([*COMPARE, "--out", str(tmp_path / "out")], environment(tmp_path))
    try:
        until(lambda: output.progress() > 50, process, output)  # past the serial half: the cascade is on the pool
        family, workers, held = family_of(process.pid)
        assert len(workers) == 2
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        end(process)
    lines = output.lines()
    assert process.returncode == 130 and lines[-1] == "error: interrupted", output.text()[-3000:]
    assert "Traceback" not in output.text() and "leaked" not in output.text()
    assert still_there(family) == [] and held and left_in_shared_memory(held) == []


def serving(process: subprocess.Popen, url: str, output: Output, timeout_s: float = 120) -> None:
    """Until ``url`` answers (the app serves its page at once and warms up behind it)."""
    def answers() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    until(answers, process, output, timeout_s)


@contextlib.contextmanager
def an_app_comparing_on_its_pool(tmp_path: Path):
    """``python app.py``, warmed up, in the middle of a comparison whose cascade runs on its pool:
    (the app's process, its stderr, its family, the shared memory they map, the page's url)."""
    from gradio_client import Client

    port = free_port()
    env = environment(tmp_path, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
                      GRADIO_ANALYTICS_ENABLED="False")
    process, output = start([sys.executable, "app.py"], env)
    url = f"http://127.0.0.1:{port}/"
    try:
        serving(process, url, output)
        client = Client(url, verbose=False)
        client.predict("a red circle", blocks=1, steps=1, api_name="/compare")  # warmed up: the pool is running
        family, workers, _ = family_of(process.pid)
        idle = sum(sum(w.cpu_times()[:2]) for w in workers)
        client.submit("a red circle moving right", blocks=16, steps=16, api_name="/compare")
        # its serial half runs in the app, its cascade on the pool
        until(lambda: sum(sum(w.cpu_times()[:2]) for w in workers) > idle + 0.3, process, output)
        yield process, output, family, shared_memory_mapped(family), url
    finally:
        end(process)


def test_ctrl_c_on_the_app_during_a_comparison_closes_its_service_and_leaves_nothing(tmp_path):
    with an_app_comparing_on_its_pool(tmp_path) as (process, output, family, held, url):
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    assert still_there(family) == [] and held and left_in_shared_memory(held) == [], output.text()[-3000:]
    with httpx.Client() as http, pytest.raises(httpx.ConnectError):
        http.get(url, timeout=5)  # nobody listens on the app's port any more


# --- SIGKILL of the command line or of `python app.py`: nobody can clean up, yet nothing stays -----------

ORPHAN_EXIT_S = 5.0  # issue 22: the pool's processes exit within 5 s of their parent's death
POOL_KINDS = ("forkserver", "resource_tracker", "workers")


def exited(process: psutil.Process) -> bool:
    """Gone, or a zombie: it has exited (its parent was killed; the init process reaps it)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def running_after(processes: list[psutil.Process], timeout_s: float) -> list[str]:
    """Those of ``processes`` that have not exited ``timeout_s`` from now (none, as soon as all have),
    described; they are killed then, so that a failing test leaves no orphan behind it."""
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in processes if not exited(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    described = []
    for orphan in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            described.append(f"{orphan.pid}: {' '.join(orphan.cmdline())[:100]}")
            orphan.kill()
    return described


def pool_processes(family: list[psutil.Process]) -> dict[str, list[psutil.Process]]:
    """The parent's pool by kind: the forkserver and the resource tracker (its children, started with
    ``-c 'from multiprocessing.<kind> import main; ...'``) and the workers (the forkserver's children)."""
    top = family[0].pid
    kinds = {kind: [] for kind in POOL_KINDS}
    for process in family[1:]:
        if process.ppid() != top:
            kinds["workers"].append(process)
        else:
            kind = next((k for k in POOL_KINDS if k in " ".join(process.cmdline())), "other")
            kinds.setdefault(kind, []).append(process)
    return kinds


def assert_sigkill_leaves_nothing(process: subprocess.Popen, family: list[psutil.Process], held: set[int]) -> None:
    kinds = pool_processes(family)
    assert [len(kinds[k]) for k in POOL_KINDS] == [1, 1, 2], kinds
    process.kill()
    process.wait(timeout=10)
    assert running_after([p for k in POOL_KINDS for p in kinds[k]], ORPHAN_EXIT_S) == []
    assert held and left_in_shared_memory(held) == []  # what the killed processes had not unlinked, the tracker did


def test_a_sigkilled_cli_leaves_no_pool_process_behind(tmp_path):
    process, output = start([*GENERATE, "--out", str(tmp_path / "out")], environment(tmp_path))
    try:
        until(lambda: output.progress() > 0, process, output)  # the run is on the pool
        family, _, held = family_of(process.pid)
        assert_sigkill_leaves_nothing(process, family, held)
    finally:
        end(process)


def test_a_sigkilled_app_leaves_no_pool_process_behind(tmp_path):
    with an_app_comparing_on_its_pool(tmp_path) as (process, _, family, held, _):
        assert_sigkill_leaves_nothing(process, family, held)
