"""The app's own cost: how long ``python app.py`` takes to serve its page, and how much a
comparison through the app costs beyond the two runs it contains.

    python -m benchmarks.bench_app [--runs 5] [--prompt TEXT] [--warm-up before|background] [--out DIR]

Starts ``python app.py`` on a free port (its default settings: on a CPU box a pool with one
worker per core) and times it until the page answers (time to serve). Then N default
comparisons go through ``gradio_client``, one after another, the first sent the moment the page
answers (so it also waits for whatever warm-up is left; it is reported apart). For each: the
client's wall time until the result is there, the two runs' latencies from its stats, the
overhead = wall time - (serial latency + cascade latency), broken down into the Service's parts
(text encoding, decoding, quality figures, finishing the videos) and Gradio's own round trip
for the same result (an endpoint in this process that returns the last comparison's result at
once, median of 5), and then the client's download of the three videos. Writes
``bench_app.json`` and ``bench_app.md`` under ``--out``. No timing is asserted anywhere: run it
alone on a quiet machine.
"""


import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red circle moving right"
SERVE_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, warm_up: str | None = None) -> tuple[subprocess.Popen, float]:
    """``python app.py`` on ``port``; returns the process and the seconds until its page answered."""
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    started = time.perf_counter()
    command = [sys.executable, "app.py"] + ([f"--warm-up={warm_up}"] if warm_up else [])
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    while time.perf_counter() - started < SERVE_TIMEOUT_S:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with code {process.returncode} before serving its page")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return process, time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_app(process)
    raise RuntimeError(f"app.py did not serve its page within {SERVE_TIMEOUT_S} s")


def stop_app(process: subprocess.Popen) -> None:
    """Ctrl-C, as a person would: the app closes its Service (and the pool's workers) on the way out."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def one_comparison(client, prompt: str) -> dict:
    started = time.perf_counter()
    *videos, stats = client.predict(prompt, api_name="/compare")
    wall = time.perf_counter() - started
    latencies = stats["serial"]["latency_s"] + stats["cascade"]["latency_s"]
    started = time.perf_counter()
    for video in videos:
        httpx.get(video["url"], timeout=30).raise_for_status()
    return {"wall_s": wall, "downloads_s": time.perf_counter() - started, "videos": [v["path"] for v in videos],
            "stats": stats, "serial_latency_s": stats["serial"]["latency_s"],
            "cascade_latency_s": stats["cascade"]["latency_s"], "overhead_s": wall - latencies,
            "queued_s": stats["queued_s"], "speedup": stats["speedup"], "ideal_speedup": stats["ideal_speedup"],
            "share_of_bound": stats["speedup"] / stats["ideal_speedup"], "plan": stats["plan"]["summary"],
            "text_s": stats["serial"]["text_encode_s"] + stats["cascade"]["text_encode_s"],
            "decode_s": stats["serial"]["decode_s"] + stats["cascade"]["decode_s"],
            "quality_s": stats["quality_s"], "videos_s": stats["files_s"]["videos"],
            "timeline_s": stats["files_s"]["timeline"],
            "executor": stats["cascade"]["executor"],
            "workers": stats["cascade"]["workers"], "blocks": stats["cascade"]["blocks"],
            "steps": stats["cascade"]["steps"]}


def gradio_round_trip(result: dict, calls: int = 5) -> float:
    """Median seconds, through the same kind of client, for an endpoint of the app's shape (three
    videos and the stats) that returns ``result``'s own files and stats at once: Gradio's queue,
    postprocessing and transfer, which no app code can avoid."""
    import tempfile

    import gradio as gr
    from gradio_client import Client

    with tempfile.TemporaryDirectory() as folder:
        def compare(prompt: str) -> tuple[gr.FileData, gr.FileData, gr.FileData, dict]:
            copies = []
            for index, video in enumerate(result["videos"]):
                copies.append(Path(tempfile.mkdtemp(dir=folder)) / f"{index}.mp4")
                copies[-1].write_bytes(Path(video).read_bytes())  # a fresh file each call, as the app's are
            return (*(gr.FileData(path=str(path)) for path in copies), result["stats"])

        with gr.Blocks() as demo:
            gr.api(compare, api_name="compare")
        demo.launch(prevent_thread_lock=True, allowed_paths=[folder], server_name="127.0.0.1", server_port=free_port())
        try:
            client = Client(demo.local_url, verbose=False, download_files=False)
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                client.predict("", api_name="/compare")
                times.append(time.perf_counter() - started)
        finally:
            demo.close()
    return statistics.median(times)


def summary(rows: list[dict], key: str) -> dict:
    values = [row[key] for row in rows]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


OVERHEAD_PARTS = (("text_s", "… text encoding (both runs)"),
                  ("decode_s", "… decoding (both runs; in part during the forwards)"),
                  ("quality_s", "… quality figures (the side-by-side video encodes meanwhile)"),
                  ("videos_s", "… finishing the videos (beyond the runs and the quality figures)"),
                  ("timeline_s", "… writing timeline.json"),
                  ("gradio_s", "… Gradio's queue, postprocessing and transfer (the same result from an endpoint that does nothing)"),
                  ("rest_s", "… the rest: the app's code, the Service's stats and data files"))


def markdown(report: dict) -> str:
    steady = report["steady"]
    first = report["first"]
    setting = report["runs"][0]
    lines = [f"App (`python app.py`, default settings: {setting['executor']} executor, {setting['workers']} workers, "
             f"{setting['blocks']} blocks × {setting['steps']} steps; warm-up: {report['warm_up']}), "
             f"{len(report['runs']) - 1} comparisons after the first, through gradio_client:", "",
             "| figure | median | min | max |", "|---|---|---|---|",
             f"| time to serve the page | {report['serve_s']:.1f} s | | |",
             f"| first comparison, sent the moment the page answers | {first['wall_s']:.2f} s | | |"]
    if steady:
        rows = [("wall_s", "comparison, client wall time until the result"),
                ("serial_latency_s", "serial latency"), ("cascade_latency_s", "cascade latency"),
                ("overhead_s", "overhead (wall − both latencies)"), *OVERHEAD_PARTS,
                ("app_overhead_s", "the app's own overhead (overhead − Gradio's round trip)"),
                ("downloads_s", "then downloading the three videos (the client)")]
        for key, label in rows:
            s = steady[key]
            lines.append(f"| {label} | {s['median']:.2f} s | {s['min']:.2f} s | {s['max']:.2f} s |")
        for key, label in (("speedup", "speedup (serial on 1 core ÷ cascade on the pool)"),
                           ("share_of_bound", "share of the plan's bound")):
            s = steady[key]
            lines.append(f"| {label} | {s['median']:.2f} | {s['min']:.2f} | {s['max']:.2f} |")
        lines += ["", f"The plan the page ran: {setting['plan']} (the bound, “at most”, is the page's ideal). "
                      f"First comparison ÷ median later one: {first['wall_s'] / steady['wall_s']['median']:.2f}."]
    lines += ["", f"Machine: {report['machine']}."]
    return "\n".join(lines) + "\n"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_report(out: Path, name: str, report: dict, table: str) -> None:
    """``name``.json (the figures) and ``name``.md (the table, also printed) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{name}.md").write_text(table)
    print(table)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="comparisons after the first (default 5)")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--warm-up", choices=("before", "background"), default=None,
                        help="app.py's --warm-up (default: the app's own)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    from gradio_client import Client

    port = free_port()
    process, serve_s = start_app(port, args.warm_up)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        runs = [one_comparison(client, args.prompt) for _ in range(args.runs + 1)]
        gradio_s = gradio_round_trip(runs[-1])  # while the app still serves the files
    finally:
        stop_app(process)
    for run in runs:
        del run["stats"], run["videos"]
        run["gradio_s"] = gradio_s
        run["rest_s"] = run["overhead_s"] - sum(run[key] for key, _ in OVERHEAD_PARTS if key != "rest_s")
        run["app_overhead_s"] = run["overhead_s"] - gradio_s
    steady = runs[1:]
    keys = ("wall_s", "serial_latency_s", "cascade_latency_s", "overhead_s", *(key for key, _ in OVERHEAD_PARTS),
            "app_overhead_s", "downloads_s", "speedup", "share_of_bound")
    import app  # light: the standard library and the fork server

    report = {"warm_up": args.warm_up or f"{app.WARM_UP} (the app's default)", "serve_s": serve_s, "first": runs[0], "runs": runs,
              "steady": {key: summary(steady, key) for key in keys} if steady else {},
              "machine": machine()}
    write_report(args.out, "bench_app", report, markdown(report))
    return report


if __name__ == "__main__":
    main()
