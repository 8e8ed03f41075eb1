"""The app under load: requests per minute and latency percentiles at 1, 4 and 8 concurrent
clients, and the peak memory of one comparison at the default settings and at the page's bounds.

    python -m benchmarks.bench_load [--requests 8] [--out benchmarks/results]

Starts ``python app.py`` on a free port (its default settings: on a CPU box a pool with one
worker per core) and waits for its warm-up with one comparison. Then, at each concurrency C,
``--requests`` comparisons go through C gradio_client clients at once, each request with its own
example prompt and seed: requests per minute = completed / the round's wall time, and p50/p95 of
each request's client wall time, waiting in the queue included (one comparison runs at a time,
so latency grows with C while throughput stays). A request the queue refuses is counted apart.

Memory: the proportional set size (PSS: pages shared between the app and its forked workers
counted once) of the app and every process under it, sampled while one comparison runs, at the
defaults, at more blocks, and at the Service's bounds (``cascade.service.Limits``): the bound on
blocks and steps is what bounds a run's memory. Writes ``bench_load.json`` and ``bench_load.md``
under ``--out``. No timing is asserted anywhere: run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from benchmarks.bench_app import free_port, machine, start_app, stop_app, write_report

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 4, 8)
SAMPLE_S = 0.05
MB = 2**20


def timed_request(client, prompt: str, seed: int) -> dict:
    from gradio_client.utils import QueueError

    started = time.perf_counter()
    try:
        _, _, _, stats = client.predict(prompt, seed=seed, api_name="/compare")
    except QueueError:
        return {"refused": True, "wall_s": time.perf_counter() - started}
    return {"refused": False, "wall_s": time.perf_counter() - started, "queued_s": stats["queued_s"],
            "settings": {key: stats["cascade"][key] for key in ("executor", "workers", "blocks", "steps")}}


def percentile(values: list[float], p: int) -> float:
    """The p-th percentile, interpolated between the two nearest values (as numpy's default)."""
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if len(values) > 1 else values[0]


def load_round(url: str, clients: int, requests: int, prompts: list[str]) -> dict:
    """``requests`` comparisons from ``clients`` gradio_client clients at once, each a visitor who
    sends the next request when the last one's videos are back."""
    from gradio_client import Client

    visitors = [Client(url, verbose=False) for _ in range(clients)]

    def visit(k: int) -> list[dict]:
        return [timed_request(visitors[k], prompts[i % len(prompts)], seed=i) for i in range(k, requests, clients)]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as threads:
        rows = [row for visited in threads.map(visit, range(clients)) for row in visited]
    wall = time.perf_counter() - started
    done = [row["wall_s"] for row in rows if not row["refused"]]
    return {"clients": clients, "requests": requests, "completed": len(done),
            "refused": sum(row["refused"] for row in rows), "wall_s": wall,
            "requests_per_minute": 60 * len(done) / wall, "latency_p50_s": percentile(done, 50),
            "latency_p95_s": percentile(done, 95), "latencies_s": done,
            "settings": next(row["settings"] for row in rows if not row["refused"])}


def pss(process: psutil.Process) -> int:
    """Bytes of the process tree under ``process``, shared pages divided among their sharers."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_full_info().pss
        except psutil.NoSuchProcess:
            continue
    return total


def peak_memory(app_pid: int, client, blocks: int, steps: int) -> dict:
    """The app's PSS before and at its peak while one comparison of ``blocks`` × ``steps`` runs."""
    process = psutil.Process(app_pid)
    idle = pss(process)
    peak, running = [idle], threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            peak.append(pss(process))
            time.sleep(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _, _, _, stats = client.predict("a red circle moving right", blocks=blocks, steps=steps, api_name="/compare")
    finally:
        running.clear()
        sampler.join()
    return {"blocks": blocks, "steps": steps, "idle_pss_mb": idle / MB, "peak_pss_mb": max(peak) / MB,
            "serial_latency_s": stats["serial"]["latency_s"], "cascade_latency_s": stats["cascade"]["latency_s"]}


def markdown(report: dict) -> str:
    s = report["levels"][0]["settings"]
    lines = [f"App under load (`python app.py`, default settings: {s['executor']} executor, {s['workers']} workers, "
             f"{s['blocks']} blocks × {s['steps']} steps; queue size {report['queue_size']}), "
             f"{report['levels'][0]['requests']} comparisons per level through gradio_client, each client its "
             "own prompt and seed; latency is the client's wall time, waiting in the queue included:", "",
             "| clients at once | requests/min | p50 latency | p95 latency | refused |", "|---|---|---|---|---|"]
    lines += [f"| {r['clients']} | {r['requests_per_minute']:.1f} | {r['latency_p50_s']:.2f} s | "
              f"{r['latency_p95_s']:.2f} s | {r['refused']} |" for r in report["levels"]]
    lines += ["", "Peak memory of one comparison (PSS of the app and its workers, sampled every "
              f"{SAMPLE_S * 1000:.0f} ms; the page's bounds are {report['bounds']['blocks']} blocks × "
              f"{report['bounds']['steps']} steps):", "",
              "| blocks × steps | idle | peak | serial latency | cascade latency |", "|---|---|---|---|---|"]
    lines += [f"| {m['blocks']} × {m['steps']} | {m['idle_pss_mb']:.0f} MB | {m['peak_pss_mb']:.0f} MB | "
              f"{m['serial_latency_s']:.2f} s | {m['cascade_latency_s']:.2f} s |" for m in report["memory"]]
    lines += ["", f"Machine: {report['machine']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8, help="comparisons per concurrency level (default 8)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    import app
    from gradio_client import Client

    from cascade.service import Limits

    bounds = Limits()
    port = free_port()
    process, _ = start_app(port)
    url = f"http://127.0.0.1:{port}/"
    try:
        client = Client(url, verbose=False)
        defaults = timed_request(client, "a red circle moving right", seed=0)["settings"]  # waits for the warm-up
        levels = [load_round(url, c, args.requests, app.load_examples()) for c in CONCURRENCY]
        sizes = [(defaults["blocks"], defaults["steps"]), (bounds.blocks, defaults["steps"]),
                 (bounds.blocks, bounds.steps)]
        memory = [peak_memory(process.pid, client, blocks, steps) for blocks, steps in sizes]
    finally:
        stop_app(process)
    report = {"levels": levels, "memory": memory, "queue_size": app.QUEUE_SIZE,
              "bounds": {"blocks": bounds.blocks, "steps": bounds.steps},
              "machine": machine()}
    write_report(args.out, "bench_load", report, markdown(report))
    return report


if __name__ == "__main__":
    main()
