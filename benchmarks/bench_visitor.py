"""What a visitor gets: the page's default comparison, exactly as the page runs it, at 4 and 16
steps, with and without BWCache, timed on this machine, beside the bound of the plan it ran and
its quality on 96 held-out pairs with a paired test against serial.

    python -m benchmarks.bench_visitor [--repeats 3] [--out benchmarks/results] [--blocks N]

Each row is ``Service.default_request()`` (on a CPU box a pool of one-core workers) with only the
steps and BWCache changed, so its plan is the one the page would choose. Timings are medians of
``--repeats`` comparisons after a warm-up. On a pool each comparison also makes the page's third
run, sequence parallelism (the serial schedule with each forward's tokens split over the same
workers), and each row records it under ``"sequence"`` (``sequence_figures``: its speedup over
serial on one worker, its bounds with free and with measured communication, the communication's
share of its latency, and how far its frames are from serial's); ``benchmarks/report.py`` renders
those rows in BENCHMARKS.md. ``--blocks`` shortens the video (a smoke run). Quality comes from the committed evaluations of the
same computation (``python -m cascade eval --prompts 96``, ``benchmarks/results/eval_*.json``):
per analyzer score, the share of pairs right, and McNemar's exact p-value of the per-pair verdicts
against plain serial at the same steps (one object: a frame share, so its verdict is ≥ 0.5).
No timing is asserted anywhere: run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np

from cascade.metrics import mcnemar_p
from cascade.plan import QUALITY_SCORES
from cascade.service import COMPARE_RUNS, Service

from .bench_app import machine, write_report

RESULTS = Path(__file__).parent / "results"
ROWS = ((4, False), (4, True), (16, False), (16, True))


def evaluation(results: Path, **settings) -> dict | None:
    """The committed 96-pair evaluation of exactly these settings, if there is one."""
    for path in sorted(results.glob("eval_*.json")):
        report = json.loads(path.read_text())
        if all(report.get(k) == v for k, v in settings.items()) and "items" in report:
            return {"source": path.name, **report}
    return None


def verdicts(report: dict, score: str) -> list[bool]:
    items = sorted(report["items"], key=lambda i: (i["prompt"], i["seed"]))
    return [bool(i[score] is not None and i[score] >= 0.5) for i in items]


def paired_quality(cascade: dict | None, serial: dict | None) -> dict:
    if cascade is None or serial is None:
        return {}
    out = {"source": cascade["source"], "serial_source": serial["source"], "pairs": cascade["prompts"]}
    for score in QUALITY_SCORES:
        ours, theirs = verdicts(cascade, score), verdicts(serial, score)
        out[score] = {"cascade": sum(ours) / len(ours), "serial": sum(theirs) / len(theirs),
                      "mcnemar_p": mcnemar_p(theirs, ours)}
    return out


def row(service: Service, steps: int, bwcache: bool, repeats: int, results: Path, blocks: int | None = None) -> dict:
    request = replace(service.default_request(), steps=steps, bwcache=bwcache, blocks=blocks)
    if request.executor == "distributed":
        request = replace(request, runs=COMPARE_RUNS)
    service.compare(request)  # warm: a first comparison at new settings builds caches
    compared = [service.compare(request) for _ in range(repeats)]
    runs = sorted((c.stats for c in compared), key=lambda s: s["speedup"])
    stats = runs[len(runs) // 2]
    plan = stats["plan"]
    delta = request.bwcache_threshold if bwcache else None
    cascade = evaluation(results, mode="cascade", steps=steps, window=plan["window"], stride=plan["stride"],
                         recache=plan["recache"], joint=plan["joint"], bwcache=delta)
    serial = evaluation(results, mode="serial", steps=steps, recache=True, bwcache=None)
    return {"steps": steps, "bwcache": delta, "plan": plan["summary"], "reason": plan["reason"],
            "speedups": [s["speedup"] for s in runs], "speedup": stats["speedup"], "bound": plan["bound"],
            "share_of_bound": stats["speedup"] / plan["bound"], "serial_latency_s": stats["serial"]["latency_s"],
            "cascade_latency_s": stats["cascade"]["latency_s"], "quality": paired_quality(cascade, serial),
            **({"sequence": sequence_figures(compared)} if "sequence" in request.runs else {})}


def sequence_figures(compared: list) -> dict:
    """The sequence run of the comparison with the median sequence speedup: serial's latency (one
    worker of the pool's kind) and its own, the speedup, the bound with free communication (W ×
    BWCache's cut), the bound with the communication it measured (a worker's mean seconds in
    collectives), the busiest worker's seconds and their share of its latency, and its frames'
    largest difference from serial's (in /255)."""
    middle = sorted(compared, key=lambda c: c.stats["sequence_speedup"])[len(compared) // 2]
    stats, plan = middle.stats, middle.stats["sequence_plan"]
    sequence = stats["sequence"]
    difference = np.abs(middle.serial.frames.astype(int) - middle.sequence.frames.astype(int)).max()
    return {"blocks": sequence["blocks"], "workers": sequence["workers"], "threads": sequence["threads"],
            "serial_latency_s": stats["serial"]["latency_s"], "sequence_latency_s": sequence["latency_s"],
            "speedups": sorted(c.stats["sequence_speedup"] for c in compared), "speedup": stats["sequence_speedup"],
            "bound": plan["bound"], "bound_with_communication": plan["bound_with_communication"],
            "mean_communication_s": plan["mean_communication_s"], "communication_s": sequence["communication_s"],
            "communication_share": sequence["communication_s"] / sequence["latency_s"],
            "max_abs_diff_255": int(difference)}


def markdown(report: dict) -> str:
    lines = ["What a visitor gets: the page's default comparison (`Service.default_request()`, its plan chosen for "
             f"the backend) with only steps and BWCache changed; medians of {report['repeats']} comparisons. "
             "Quality: share of the 96 held-out pairs right, cascade vs plain serial at the same steps, McNemar's "
             "exact p of the per-pair verdicts.", "",
             "| steps | BWCache | plan | serial s | cascade s | speedup | bound | share of bound | "
             + " | ".join(f"{k.replace('_', ' ')} (p)" for k in QUALITY_SCORES) + " |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(QUALITY_SCORES)]
    for r in report["rows"]:
        q = r["quality"]
        scores = [f"{q[k]['cascade']:.1%} vs {q[k]['serial']:.1%} ({q[k]['mcnemar_p']:.2f})" if q else "–"
                  for k in QUALITY_SCORES]
        cache = "–" if r["bwcache"] is None else f"δ {r['bwcache']:g}"
        lines.append(f"| {r['steps']} | {cache} | {r['plan']} | "
                     f"{r['serial_latency_s']:.3f} | {r['cascade_latency_s']:.3f} | **{r['speedup']:.2f}×** | "
                     f"{r['bound']:.2f}× | {r['share_of_bound']:.0%} | " + " | ".join(scores) + " |")
    lines += ["", f"Machine: {report['machine']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the committed evaluations are")
    parser.add_argument("--blocks", type=int, default=None, help="video length in blocks (default: the page's)")
    args = parser.parse_args(argv)
    with Service() as service:  # the page's own bounds and defaults
        rows = [row(service, steps, bwcache, args.repeats, args.results, args.blocks) for steps, bwcache in ROWS]
    report = {"repeats": args.repeats, "rows": rows, "machine": machine()}
    write_report(args.out, "bench_visitor", report, markdown(report))
    return report


if __name__ == "__main__":
    main()
