"""Prompt switches mid-video: what a switch costs serially (LongLive's KV recache) and with Block
Cascading (no recache), and how well the bundled model follows one.

``python -m benchmarks.bench_switch --json benchmarks/results/bench_switch.json [--runs 3] [--schedules 32]``

Timing: the machine's default comparison (``Service.default_request``: here a pool of one worker
per core, the serial run on one such core) of tiny-shapes, 8 blocks, the prompt switching at block
4, for several prompt pairs, ``--runs`` seeds each, and the same comparison without the switch.
Per switch and run: the switch latency (``blocks_shown_s[4] - blocks_shown_s[3]``: the last block
shown under the old prompt to the first under the new), the forwards the run spent on the switch,
and its extra forwards measured against the run without the switch, beside the gap between the
same two blocks without a switch.

Quality: the analyzer's scores of the stretch after the switch (blocks 5-7; block 4 is the
transition) against the new prompt, on ``--schedules`` held-out switch schedules
(``data.switch_eval_set``: an eval prompt whose colour changes at block 4), serial and cascade.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.output import write_report
from cascade.service import GenerateRequest, Service
from cascade.evaluate import evaluate_switches

MODEL, BLOCKS, SWITCH_BLOCK = "tiny-shapes", 8, 4
RUNS = ("serial", "cascade")
PAIRS = (
    ("a red circle moving right", "a blue circle moving right"),
    ("a yellow square moving left", "a green square moving left"),
    ("a white triangle staying still", "a purple triangle staying still"),
    ("a cyan circle moving up", "an orange circle moving up"),
)


def timing(service: Service, runs: int) -> tuple[GenerateRequest, list[dict]]:
    """Every pair and seed, switched and plain: one row per run (serial, cascade) of each."""
    request = replace(service.default_request(), model=MODEL, blocks=BLOCKS)
    service.warm_up(request)
    rows = []
    for before, after in PAIRS:
        for seed in range(runs):
            with tempfile.TemporaryDirectory() as folder:
                switched = service.compare(replace(request, prompt="", seed=seed,
                                                   prompt_schedule=((0, before), (SWITCH_BLOCK, after))), folder=folder)
                plain = service.compare(replace(request, prompt=before, seed=seed), folder=folder)
            rows += [switch_row(before, after, seed, name, switched.stats[name], plain.stats[name]) for name in RUNS]
    return service.resolve(request), rows


def switch_row(before: str, after: str, seed: int, run: str, switched: dict, plain: dict) -> dict:
    (switch,) = switched["switches"]
    shown = plain["blocks_shown_s"]
    return {"before": before, "after": after, "seed": seed, "run": run, "latency_s": switch["latency_s"],
            "forwards": switch["forwards"], "extra_forwards": switched["forwards"] - plain["forwards"],
            "gap_without_switch_s": shown[SWITCH_BLOCK] - shown[SWITCH_BLOCK - 1],
            "run_latency_s": switched["latency_s"], "executor": switched["executor"], "workers": switched["workers"]}


def summary(rows: list[dict]) -> dict:
    """Per run: medians and ranges of the switch latency and the plain gap, forwards; and how often
    the cascade's switch was faster than serial's on the same pair and seed."""
    out = {}
    for name in RUNS:
        mine = [r for r in rows if r["run"] == name]
        latencies = [r["latency_s"] for r in mine]
        out[name] = {"switch_latency_median_s": statistics.median(latencies), "switch_latency_min_s": min(latencies),
                     "switch_latency_max_s": max(latencies),
                     "gap_without_switch_median_s": statistics.median(r["gap_without_switch_s"] for r in mine),
                     "switch_forwards": sorted({r["forwards"] for r in mine}),
                     "extra_forwards": sorted({r["extra_forwards"] for r in mine})}
    pairs = list(zip(*([r for r in rows if r["run"] == name] for name in RUNS)))
    faster = sum(c["latency_s"] < s["latency_s"] for s, c in pairs)
    out["cascade_faster_switches"] = f"{faster}/{len(pairs)}"
    out["cascade_switch_latency_below_serial"] = (
        faster == len(pairs) and out["cascade"]["switch_latency_median_s"] < out["serial"]["switch_latency_median_s"])
    return out


def quality(service: Service, schedules: int) -> dict:
    """The analyzer on held-out switch schedules, serial and cascade (the model's own settings,
    the default cascade; one device batched: the frames do not depend on the executor)."""
    request = GenerateRequest(model=MODEL, blocks=BLOCKS, executor="batched")
    reports = {}
    for name in RUNS:
        report = evaluate_switches(service, replace(request, mode=name), schedules, SWITCH_BLOCK)
        reports[name] = report
        print(f"{name}: after-switch colour {report['summary']['after']['colour']['mean']:.1%}", file=sys.stderr)
    return reports


def _cell(score: dict) -> str:
    return "–" if score["mean"] is None else f"{score['mean']:.1%} [{score['low']:.1%}, {score['high']:.1%}]"


def markdown(report: dict) -> str:
    t, q = report["summary"], report["quality"]
    s = report["settings"]
    lines = [
        "## Prompt switches (`python -m benchmarks.bench_switch`)", "",
        f"{MODEL}, {BLOCKS} blocks × {s['steps']} steps, the prompt switching at block {SWITCH_BLOCK}; the "
        f"default comparison on this machine ({s['cores']} cores): serial on one worker's core against the cascade "
        f"W{s['window']} s{s['stride']} on {s['executor']} ({s['workers']} workers); {len(PAIRS)} prompt pairs × "
        f"{report['runs']} seeds. Switch latency: from the last block shown under the old prompt to the first under "
        "the new (`blocks_shown_s`); serial re-encodes the blocks block 4 attends to under the new prompt first "
        "(LongLive's KV recache), the cascade switches with no extra forward. Extra forwards: against the same "
        "comparison without the switch.", "",
        "| run | switch latency s (median, min–max) | same gap without a switch s | forwards on the switch | extra forwards |",
        "|---|---|---|---|---|",
    ]
    for name in RUNS:
        r = t[name]
        lines.append(f"| {name} | {r['switch_latency_median_s']:.3f} ({r['switch_latency_min_s']:.3f}–"
                     f"{r['switch_latency_max_s']:.3f}) | {r['gap_without_switch_median_s']:.3f} | "
                     f"{', '.join(map(str, r['switch_forwards']))} | {', '.join(map(str, r['extra_forwards']))} |")
    lines += ["", f"Cascade switch faster than serial's on {t['cascade_faster_switches']} (pair, seed) runs; "
                  f"below serial's: **{'yes' if t['cascade_switch_latency_below_serial'] else 'no'}**.", "",
              f"Analyzer on {q['serial']['schedules']} held-out switch schedules (an eval prompt whose colour changes "
              f"at block {SWITCH_BLOCK}; scored before the switch on blocks 0–{SWITCH_BLOCK - 1}, after it on blocks "
              f"{SWITCH_BLOCK + 1}–{BLOCKS - 1}, block {SWITCH_BLOCK} left out as the transition). The bundled model "
              "was never trained on switches (issue 14, point 3).", "",
              "| run | colour before | colour after | shape after | motion after | one object after |",
              "|---|---|---|---|---|---|"]
    for name in RUNS:
        before, after = q[name]["summary"]["before"], q[name]["summary"]["after"]
        label = name if name == "serial" else f"{name} W{q[name]['window']} s{q[name]['stride']}"
        lines.append(f"| {label} | {_cell(before['colour'])} | "
                     f"{_cell(after['colour'])} | {_cell(after['shape'])} | {_cell(after['motion'])} | "
                     f"{_cell(after['one_object'])} |")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3, help="seeds per prompt pair")
    parser.add_argument("--schedules", type=int, default=32, help="held-out switch schedules for the analyzer")
    args = parser.parse_args(argv)
    with Service() as service:
        request, rows = timing(service, args.runs)
        qualities = quality(service, args.schedules)
    settings = {"steps": request.steps, "window": request.window, "stride": request.stride,
                "executor": rows[-1]["executor"], "workers": rows[-1]["workers"], "cores": os.cpu_count(),
                "torch_threads": torch.get_num_threads()}
    report = {"settings": settings, "runs": args.runs, "summary": summary(rows), "rows": rows, "quality": qualities}
    write_report(args.json, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
