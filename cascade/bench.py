"""``python -m cascade bench``: serial against Block Cascading on this machine, with its bounds.

All figures come from one run, so the bounds and the speedups were measured under the same
conditions:

- bound (a): the throughput of W single-thread forward loops running at once against one loop
  alone: what W one-core workers can give at best before any communication;
- bound (b): the per-block cost of one batched forward of a tick's blocks on all cores against
  one block on all cores: what batching a tick can give at best on one device.

Speedups are counted as the Block Cascading paper counts them (serial on one worker of the kind
each cascade worker is) and at equal total compute (serial given all cores). Quality does not
depend on the executor (the executors are tested to agree), so it is measured once per
computation (schedule, recache, joint) on held-out prompts, with the analyzer and against serial.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .backend.local import torch_threads
from .model.presets import load_model
from .costs import ForwardTimer
from .service import UNLIMITED, GenerateRequest, Service
from .toy import data
from .toy.analyzer import aggregate, judge

PROMPT = "a red circle moving right"


# ----------------------------------------------------------------------------- machine bounds

def _forward_server(model_name: str, commands, results) -> None:
    """A single-thread forward loop that times ``forwards`` forwards from a given moment, on demand."""
    torch.set_num_threads(1)
    timer = ForwardTimer(load_model(model_name), 1)
    results.put("ready")
    for start_at, forwards in iter(commands.get, None):
        time.sleep(max(0.0, start_at - time.perf_counter()))
        results.put(timer.seconds(forwards))


def bound_concurrent(model_name: str, workers: int, forwards: int, rounds: int = 5) -> dict:
    """Throughput of ``workers`` single-thread loops running together against one loop alone.

    Measured in rounds, each timing one loop alone and then all loops together (started at one
    moment on the shared monotonic clock), so that a drifting machine speed moves both alike."""
    context = mp.get_context("spawn")
    commands, results = [context.Queue() for _ in range(workers)], context.Queue()
    servers = [context.Process(target=_forward_server, args=(model_name, q, results)) for q in commands]
    for server in servers:
        server.start()
    for _ in servers:
        results.get(timeout=600)
    per_round = max(1, forwards // rounds)

    def timed(loops: int) -> float:
        start_at = time.perf_counter() + 0.05
        for q in commands[:loops]:
            q.put((start_at, per_round))
        return statistics.mean(results.get(timeout=600) for _ in range(loops))

    alone, together = [], []
    for _ in range(rounds):
        alone.append(timed(1))
        together.append(timed(workers))
    for q, server in zip(commands, servers):
        q.put(None)
        server.join()
    alone_s, together_s = statistics.median(alone), statistics.median(together)
    return {"workers": workers, "rounds": rounds, "forward_alone_ms": alone_s * 1e3,
            "forward_concurrent_ms": together_s * 1e3, "bound": workers * alone_s / together_s}


def bound_batched(model, batch_sizes: list[int], forwards: int, threads: int, rounds: int = 5) -> dict:
    """Per-block cost of batched forwards of a tick's blocks, all cores; batch sizes take turns
    in rounds (as in ``bound_concurrent``)."""
    per_round = max(1, forwards // rounds)
    with torch_threads(threads):
        timers = {rows: ForwardTimer(model, rows) for rows in batch_sizes}
        samples = {rows: [] for rows in batch_sizes}
        for _ in range(rounds):
            for rows, timer in timers.items():
                samples[rows].append(timer.seconds(per_round) / rows)
    per_block = {rows: statistics.median(v) for rows, v in samples.items()}
    best = min(per_block.values())
    return {"per_block_ms": {str(k): v * 1e3 for k, v in per_block.items()}, "rounds": rounds,
            "bound": per_block[1] / best}


# ----------------------------------------------------------------------------- timed runs

def timed_rounds(service: Service, requests: list[GenerateRequest], repeats: int) -> list[dict]:
    """Median latency of every request over ``repeats`` runs after one warm-up each.

    The runs go in rounds that visit every request in turn, so a machine whose speed drifts while
    the bench runs (this shared VM's 2-thread forwards drifted by a third within minutes) moves
    every row alike instead of whichever rows happened to run during the slow minutes."""
    for request in requests:
        service.generate(request, files=False)
    runs: list[list[dict]] = [[] for _ in requests]
    for _ in range(repeats):
        for index, request in enumerate(requests):
            runs[index].append(service.generate(request, files=False).stats)
    return [_median_run(r) for r in runs]


def _median_run(runs: list[dict]) -> dict:
    runs = sorted(runs, key=lambda s: s["latency_s"])
    stats = runs[len(runs) // 2]
    comm = stats.get("communication_s")
    return {
        "latency_s": stats["latency_s"], "latencies_s": [s["latency_s"] for s in runs],
        "fps": stats["fps"], "block_fps": stats["block_fps"], "time_to_first_block_s": stats["time_to_first_block_s"],
        "steps": stats["steps"], "ticks": stats["ticks"], "forwards": stats["forwards"],
        "model_calls": stats["model_calls"], "workers": stats["workers"], "threads": stats["threads"],
        "kv_exchange": stats["kv_exchange"], "bwcache": stats["bwcache"],
        "communication_share": (comm / stats["latency_s"]) if comm is not None else None,
    }


COMBINED_THRESHOLD = 0.3  # BWCache's δ in the combined rows: the bundled model's best-scoring setting at 16 steps


def variants(quick: bool) -> list[dict]:
    """(name, request changes, executor kind, threads) of every timed configuration.

    The "both accelerations" rows run a cascade with BWCache on the pool against plain serial on
    one core at the same step count (the 16-step serial row is their reference at 16 steps)."""
    cascade = dict(mode="cascade", window=2, stride=1)
    both = dict(mode="cascade", window=2, bwcache=True, bwcache_threshold=COMBINED_THRESHOLD)
    pool = dict(executor="distributed", threads=1)
    rows = [
        dict(name="serial, 1 core", changes=dict(mode="serial"), executor="local", threads=1),
        dict(name="serial, 2 cores", changes=dict(mode="serial"), executor="local", threads=2),
        dict(name="cascade W2 s1, 2 workers x 1 core", changes=cascade, **pool),
        dict(name="cascade W2 s1, 2 workers x 1 core, K/V by gloo broadcast", changes=cascade, **pool,
             kv_exchange="broadcast"),
        dict(name="cascade W2 s1 no recache, 2 workers x 1 core", changes={**cascade, "recache": False}, **pool),
        dict(name="cascade W2 s2, 2 workers x 1 core", changes={**cascade, "stride": 2}, **pool),
        dict(name="cascade W4 s1, batched, 2 cores", changes=dict(mode="cascade", window=4, stride=1),
             executor="batched", threads=2),
        dict(name="cascade W4 s1 joint, 2 cores", changes=dict(mode="cascade", window=4, stride=1, joint=True),
             executor="local", threads=2),
        dict(name=f"both: cascade W2 s1 + BWCache δ{COMBINED_THRESHOLD}, 2 workers x 1 core",
             changes={**both, "stride": 1}, **pool),
        dict(name="serial, 1 core, 16 steps", changes=dict(mode="serial", steps=16), executor="local", threads=1),
        dict(name=f"both: cascade W2 s4 + BWCache δ{COMBINED_THRESHOLD}, 2 workers x 1 core, 16 steps",
             changes={**both, "steps": 16, "stride": 4}, **pool),
    ]
    if not quick:
        for window in (2, 4, 8):
            for stride in (1, 2, 3):
                rows.append(dict(name=f"sweep: cascade W{window} s{stride}, batched, 2 cores",
                                 changes=dict(mode="cascade", window=window, stride=stride),
                                 executor="batched", threads=2))
    return rows


def row_request(base: GenerateRequest, row: dict) -> GenerateRequest:
    return replace(base, **row["changes"], executor=row["executor"], workers=2, threads=row["threads"],
                   kv_exchange=row.get("kv_exchange", "auto"))


def end_to_end(service: Service, request: GenerateRequest, repeats: int) -> dict:
    """Wall time of a whole request as a user waits for it (text, denoising, decoding)."""
    service.generate(request, files=False)
    times = []
    for _ in range(max(repeats, 3)):
        started = time.perf_counter()
        result = service.generate(request, files=False)
        times.append(time.perf_counter() - started)
    return {"frames": result.stats["frames"], "blocks": result.stats["blocks"], "steps": result.stats["steps"],
            "bwcache": request.bwcache_delta,
            "seconds": statistics.median(times), "all_seconds": times}


# ----------------------------------------------------------------------------- quality

def computation_key(request: GenerateRequest) -> tuple:
    """What decides a run's frames (not the executor: the executors are tested to agree)."""
    cascade = request.mode == "cascade"
    return (request.mode, request.steps, request.window if cascade else 1, request.stride if cascade else None,
            request.recache, request.joint, request.bwcache_delta)


def quality(service: Service, base: GenerateRequest, rows: list[dict], prompts: int) -> dict:
    """Analyzer scores and PSNR/SSIM vs plain serial at the same steps, per distinct computation,
    on held-out prompts (run batched on this process: the frames do not depend on the executor)."""
    items = data.eval_set(prompts, seed=0)
    serial_frames: dict[tuple, np.ndarray] = {}

    def frames(request: GenerateRequest, item) -> np.ndarray:
        return service.generate(replace(request, prompt=item.prompt, seed=item.seed, executor="batched",
                                        threads=None), files=False).frames

    results = {}
    for row in rows:
        request = row_request(base, row)
        key = computation_key(request)
        if key in results:
            continue
        serial = replace(request, mode="serial", joint=False, bwcache=False, recache=True)
        scores, psnrs, ssims = [], [], []
        for item in items:
            reference = (request.steps, item)
            if reference not in serial_frames:
                serial_frames[reference] = frames(serial, item)
            clip = frames(request, item)
            scores.append(judge(clip, item.prompt))
            psnrs.append(metrics.psnr(serial_frames[reference], clip))
            ssims.append(metrics.ssim(serial_frames[reference], clip))
        finite = [p for p in psnrs if p != float("inf")]
        results[key] = {
            "analyzer": aggregate(scores),
            "psnr_db_vs_serial": statistics.mean(finite) if finite else float("inf"),
            "ssim_vs_serial": statistics.mean(ssims),
        }
    return results


# ----------------------------------------------------------------------------- report

def run(args: argparse.Namespace) -> dict:
    with Service(device="cpu", limits=UNLIMITED) as service:  # the command line: the machine is its user's
        return _run(service, args)


def _run(service: Service, args: argparse.Namespace) -> dict:
    model = load_model(args.model)
    base = GenerateRequest(prompt=PROMPT, model=args.model, blocks=args.blocks, steps=args.steps,
                           bwcache=args.bwcache, bwcache_threshold=args.bwcache_threshold)
    forwards = 20 if args.quick else 100
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "processor": platform.processor()},
        "model": model.name, "random_weights": model.random_weights, "blocks": base.resolved(model).blocks,
        "steps": args.steps or model.sampler.num_steps, "quick": args.quick,
        "bwcache": base.bwcache_delta,
        "bounds": {
            "concurrent": bound_concurrent(args.model or model.name, 2, forwards),
            "batched": bound_batched(model, [1, 2, 4], forwards, threads=2),
        },
    }
    report["end_to_end_serial"] = end_to_end(service, replace(base, mode="serial"), args.repeats)
    # The bundled model's best-scoring setting (BENCHMARKS.md's eval table): 16 steps, BWCache δ 0.3.
    report["end_to_end_serial_16_steps_bwcache"] = end_to_end(
        service, replace(base, mode="serial", steps=16, bwcache=True, bwcache_threshold=0.3), args.repeats)
    rows = variants(args.quick)
    timings = [{"name": row["name"], "executor": row["executor"], **timing}
               for row, timing in zip(rows, timed_rounds(service, [row_request(base, r) for r in rows], args.repeats))]
    for timing in timings:
        print(f"{timing['name']}: {timing['latency_s']:.3f} s", file=sys.stderr)
    bound_a = report["bounds"]["concurrent"]["bound"]
    bound_b = report["bounds"]["batched"]["bound"]
    for row, timing in zip(rows, timings):
        add_speedups(row, timing, timings, bound_a, bound_b)
    report["runs"] = timings
    report["summary"] = summary(timings, bound_a, bound_b)
    qualities = quality(service, base, rows, args.prompts)
    for row, timing in zip(rows, timings):
        timing["quality"] = qualities[computation_key(row_request(base, row))]
    return report


def add_speedups(row: dict, timing: dict, timings: list[dict], bound_a: float, bound_b: float) -> None:
    """Speedups against plain serial at the same step count (on 1 core, and on 2 cores where
    measured), the ideal (tick ratio) and, for rows with BWCache, the product of the tick ratio
    and BWCache's cut in block computations: the bound of both accelerations together."""
    changes = row["changes"]
    plain = [t for t in timings if t["name"].startswith("serial, ") and t["steps"] == timing["steps"]]
    serial_1 = next(t for t in plain if t["threads"] == 1)
    serial_2 = next((t for t in plain if t["threads"] == 2), None)
    timing["cascade"] = changes.get("mode") == "cascade"
    timing["recache"] = changes.get("recache", True)
    timing["ideal_speedup"] = serial_1["ticks"] / timing["ticks"]
    timing["speedup_vs_serial_1_core"] = serial_1["latency_s"] / timing["latency_s"]
    timing["speedup_vs_serial_2_cores"] = serial_2["latency_s"] / timing["latency_s"] if serial_2 else None
    if changes.get("bwcache"):
        timing["product_bound"] = timing["ideal_speedup"] * timing["bwcache"]["block_computation_reduction"]
        timing["share_of_product_bound"] = timing["speedup_vs_serial_1_core"] / timing["product_bound"]
    elif row["executor"] == "distributed":
        timing["share_of_bound_a"] = timing["speedup_vs_serial_1_core"] / bound_a
    elif row["threads"] == 2 and timing["cascade"]:
        timing["share_of_bound_b"] = timing["speedup_vs_serial_2_cores"] / bound_b


def summary(runs: list[dict], bound_a: float, bound_b: float) -> dict:
    """The best cascade of each comparison the bars name, each as a share of its bound.

    "same forwards": with the recache forward, as the serial rows run; Block Cascading itself drops
    it, which is also reported (fewer forwards, so its share of a bound can pass 100%)."""
    def best(rows: list[dict], key: str) -> dict | None:
        return max(rows, key=lambda r: r[key], default=None)

    both = [r for r in runs if "product_bound" in r]
    runs = [r for r in runs if "product_bound" not in r]
    pools = [r for r in runs if r["executor"] == "distributed"]
    both_cores = [r for r in runs if r["cascade"] and r["recache"] and (r["executor"] == "distributed" or r["threads"] == 2)]
    one_device = [r for r in both_cores if r["executor"] != "distributed"]
    picks = {
        "paper_same_forwards": (best([r for r in pools if r["recache"]], "speedup_vs_serial_1_core"), "speedup_vs_serial_1_core", bound_a),
        "paper_no_recache": (best([r for r in pools if not r["recache"]], "speedup_vs_serial_1_core"), "speedup_vs_serial_1_core", bound_a),
        "same_compute": (best(both_cores, "speedup_vs_serial_2_cores"), "speedup_vs_serial_2_cores", bound_b),
        "same_compute_one_device": (best(one_device, "speedup_vs_serial_2_cores"), "speedup_vs_serial_2_cores", bound_b),
    }
    picked = {name: {"variant": row["name"], "speedup": row[key], "share_of_bound": row[key] / bound}
              for name, (row, key, bound) in picks.items() if row is not None}
    picked["both_accelerations"] = [
        {"variant": r["name"], "steps": r["steps"], "speedup": r["speedup_vs_serial_1_core"],
         "product_bound": r["product_bound"], "share_of_bound": r["share_of_product_bound"]} for r in both]
    return picked


def _summary_lines(summary: dict) -> list[str]:
    def pick(name: str, bound: str) -> str:
        p = summary[name]
        return f"{p['variant']}, **{p['speedup']:.2f}×** = {p['share_of_bound']:.0%} of bound ({bound})"

    lines = []
    if "paper_same_forwards" in summary:
        line = ("**Counted as the paper counts** (serial on 1 core against 2 one-core workers, same forwards): "
                + pick("paper_same_forwards", "a") + ".")
        if "paper_no_recache" in summary:
            line += " Without the recache forward, as Block Cascading runs: " + pick("paper_no_recache", "a") + "."
        lines += [line, ""]
    if "same_compute" in summary:
        line = ("**Same total compute** (serial on 2 cores against the best cascade on both cores, same forwards): "
                + pick("same_compute", "b") + ".")
        if summary.get("same_compute_one_device", {}).get("variant") != summary["same_compute"]["variant"]:
            line += " On one device (batched or joint): " + pick("same_compute_one_device", "b") + "."
        lines += [line, ""]
    for p in summary.get("both_accelerations", []):
        lines += [f"**Both accelerations together** at {p['steps']} steps (plain serial on 1 core against "
                  f"{p['variant'].removeprefix('both: ')}): **{p['speedup']:.2f}×** = {p['share_of_bound']:.0%} "
                  f"of the product of the two bounds (tick ratio × BWCache's cut in block computations = "
                  f"{p['product_bound']:.2f}×).", ""]
    return lines


def _pct(summary: dict, key: str) -> str:
    s = summary.get(key)
    if not s or s.get("mean") is None:
        return "–"
    return f"{s['mean']:.0%} [{s['low']:.0%}, {s['high']:.0%}]"


def _exchange_note(runs: list[dict]) -> str:
    exchange = next((r["kv_exchange"] for r in runs if r["executor"] == "distributed"), None)
    if exchange is None:
        return ""
    return (f" Worker pools move K/V through {exchange.replace('_', ' ')} (their automatic choice here), "
            "except the row that says gloo broadcast.")


def markdown(report: dict) -> str:
    b = report["bounds"]
    e2e = [report["end_to_end_serial"], report["end_to_end_serial_16_steps_bwcache"]]
    cache = "" if report.get("bwcache") is None else f", BWCache δ={report['bwcache']:g} on every row"
    lines = [
        "## Serial vs Block Cascading on this machine (`python -m cascade bench`)",
        "",
        f"Model `{report['model']}`{' (RANDOM weights: timing only, quality columns are meaningless)' if report['random_weights'] else ''}, "
        f"{report['blocks']} blocks, {report['steps']} steps, {report['machine']['cpus']} CPUs, torch {report['machine']['torch']}"
        f"{cache}"
        f"{' (quick run)' if report['quick'] else ''}.",
        "",
        f"Bounds are medians of {b['concurrent'].get('rounds', 1)} rounds that take turns, so drift moves each side alike. "
        f"Bound (a), 2 single-thread loops at once vs one: {b['concurrent']['forward_alone_ms']:.1f} ms alone, "
        f"{b['concurrent']['forward_concurrent_ms']:.1f} ms together → at most **{b['concurrent']['bound']:.2f}×**.",
        f"Bound (b), batched forward per block on 2 cores: "
        + ", ".join(f"batch {k}: {v:.1f} ms" for k, v in b["batched"]["per_block_ms"].items())
        + f" → at most **{b['batched']['bound']:.2f}×**.",
        "",
        f"A whole serial request, {e2e[0]['blocks']} blocks = {e2e[0]['frames']} frames, text encoding and "
        f"decoding included, default threads (median): **{e2e[0]['seconds']:.2f} s** at {e2e[0]['steps']} steps, "
        f"**{e2e[1]['seconds']:.2f} s** at {e2e[1]['steps']} steps with BWCache δ={e2e[1]['bwcache']:g}.",
        "",
        "Comm share: the time the most-blocked worker's items waited for K/V still on their way, "
        "over the latency. The default cascade of the CLI and the app is W4 with a stride of a quarter of the steps, at least 2. "
        "Rows are compared with plain serial at the same step count. A row without recache "
        "runs fewer forwards than the serial rows, so its share of the bound can pass 100%. The share of a "
        "\"both\" row is of the product of its tick ratio and its cut in block computations."
        + _exchange_note(report["runs"]),
        "",
        *_summary_lines(report.get("summary", {})),
        "| variant | latency s | FPS | first block s | ticks | ideal × | × vs serial 1 core | × vs serial 2 cores | share of bound | comm share | colour | shape | motion | one object | PSNR dB vs serial | SSIM |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        q = r["quality"]
        a = q["analyzer"]
        share = r.get("share_of_bound_a", r.get("share_of_bound_b", r.get("share_of_product_bound")))
        comm = r.get("communication_share")
        vs_2 = r["speedup_vs_serial_2_cores"]
        lines.append(
            f"| {r['name']} | {r['latency_s']:.3f} | {r['fps']:.1f} | {r['time_to_first_block_s']:.3f} | {r['ticks']} | "
            f"{r['ideal_speedup']:.2f} | {r['speedup_vs_serial_1_core']:.2f} | {'–' if vs_2 is None else f'{vs_2:.2f}'} | "
            f"{'–' if share is None else f'{share:.0%}'} | {'–' if comm is None else f'{comm:.0%}'} | "
            f"{_pct(a, 'colour')} | {_pct(a, 'shape')} | {_pct(a, 'motion')} | {_pct(a, 'one_object')} | "
            f"{q['psnr_db_vs_serial']:.1f} | {q['ssim_vs_serial']:.3f} |"
        )
    lines.append("")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer variants, prompts and repeats")
    parser.add_argument("--model", default=None)
    parser.add_argument("--blocks", type=int, default=None, help="video length in blocks (default: the model's)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--prompts", type=int, default=None, help="held-out prompt/seed pairs for quality")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here (e.g. BENCHMARKS.md)")
    parser.add_argument("--bwcache", action="store_true", help="BWCache on every row")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: serial against every cascade variant on one GPU, end to end at full size, "
                             "with projected multi-GPU figures (cascade/bench_gpu.py)")
    parser.add_argument("--link-gb-per-s", type=float, default=None,
                        help="cuda: the link bandwidth the multi-GPU projection assumes")
    parser.add_argument("--bwcache-threshold", type=float, default=GenerateRequest.bwcache_threshold)


def main(args: argparse.Namespace) -> int:
    if args.device == "cuda":
        from .bench_gpu import run_gpu  # deferred: it imports the full-size Wan parts

        return run_gpu(args)  # settings left None take the GPU bench's defaults (7 blocks, as Wan runs)
    args.prompts = args.prompts or (4 if args.quick else 32)
    args.repeats = args.repeats or (1 if args.quick else 5)
    report = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(metrics.json_safe(report), indent=1) + "\n")
    table = markdown(report)
    if args.markdown:
        args.markdown.write_text(table)
    print(table)
    return 0
