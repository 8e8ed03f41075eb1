"""Assemble BENCHMARKS.md from what the benchmark scripts wrote to benchmarks/results/.

    python -m cascade eval --prompts 96 --json benchmarks/results/eval_serial.json
    python -m cascade eval --mode cascade --window 4 --stride 1 --prompts 96 --json benchmarks/results/eval_cascade.json
    python -m cascade eval --steps 16 --prompts 96 --json benchmarks/results/eval_serial_16steps.json
    python -m cascade eval --steps 16 --bwcache --bwcache-threshold 0.3 --prompts 96 \
        --json benchmarks/results/eval_serial_16steps_bwcache.json
    python -m cascade eval --mode cascade --window 4 --stride 2 --prompts 96 --executor batched \
        --json benchmarks/results/eval_cascade_w4s2.json
    python -m cascade eval --mode cascade --window 4 --stride 4 --steps 16 --prompts 96 --executor batched \
        --json benchmarks/results/eval_cascade_w4s4_16steps.json          # and --stride 8: ..._w4s8_16steps.json
    python -m cascade bench --json benchmarks/results/cascade.json --markdown benchmarks/results/cascade.md
    python -m benchmarks.bench_service --json benchmarks/results/warm_start.json
    python -m benchmarks.bench_app --runs 5 --out benchmarks/results
    python -m benchmarks.bench_load                                            # alone on the machine
    python -m benchmarks.bench_cache
    python -m benchmarks.bench_switch --json benchmarks/results/bench_switch.json
    python -m benchmarks.bench_gpu --json benchmarks/results/bench_gpu.json   # on a GPU machine
    python -m benchmarks.report
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SECTIONS = ("cascade.md", "warm_start.md", "bench_app.md", "bench_load.md", "bench_gpu.md", "bench_cache.md", "bench_switch.md")

HEADER = """# Benchmarks

Every table below is written by a script; none is edited by hand. Regenerate with the commands in
`benchmarks/report.py`. Timings are from the machine named in each section and are only
comparable within a section.
"""


def _cell(summary: dict, key: str) -> str:
    s = summary.get(key)
    if not s:
        return "–"
    return f"{s['mean']:.1%} [{s['low']:.1%}, {s['high']:.1%}]"


def _cache(report: dict) -> str:
    threshold = report.get("bwcache")
    return "–" if threshold is None else f"BWCache δ={threshold:g}"


def eval_section() -> str | None:
    """The analyzer's scores of every eval_*.json, one row each."""
    reports = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("eval_*.json"))]
    if not reports:
        return None
    lines = [
        "## tiny-shapes quality on held-out prompts (`python -m cascade eval`)",
        "",
        "Means with 95% intervals (Wilson for accuracies). Bars of issue 3: colour ≥ 90%, shape ≥ 75%, "
        "motion ≥ 80%, one object ≥ 95%.",
        "",
        "| model | mode | window | stride | blocks | steps | cache | clips | colour | shape | motion | one object | flicker |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        s = r["summary"]
        flicker = s.get("flicker", {}).get("mean")
        lines.append(f"| {r['model']} | {r['mode']}{' joint' if r.get('joint') else ''} | {r['window']} | "
                     f"{r['stride']} | {r['blocks']} | {r['steps']} | {_cache(r)} | {r['prompts']} | {_cell(s, 'colour')} | "
                     f"{_cell(s, 'shape')} | {_cell(s, 'motion')} | {_cell(s, 'one_object')} | "
                     f"{'–' if flicker is None else f'{flicker:.3f}'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parts = [HEADER]
    evals = eval_section()
    if evals:
        parts.append(evals)
    for name in SECTIONS:
        path = RESULTS / name
        if path.exists():
            parts.append(path.read_text().strip() + "\n")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"wrote {ROOT / 'BENCHMARKS.md'} from {len(parts) - 1} section(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
