"""Assemble BENCHMARKS.md from what the benchmark scripts wrote to benchmarks/results/.

    python -m cascade eval --prompts 96 --json benchmarks/results/eval_serial.json
    (results/previous_model: the same files from the bundled model before its latest fine-tune)
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
PREVIOUS = RESULTS / "previous_model"  # the evals of the bundled model before its latest fine-tune
WEIGHTS = ROOT / "cascade" / "weights" / "tiny-shapes"
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


def training_steps(folder: Path) -> str:
    """The training steps of the model whose model.json is in ``folder``, for a table."""
    return f"{json.loads((folder / 'model.json').read_text())['training']['steps']:,}"


def eval_section() -> str | None:
    """The analyzer's scores of every eval_*.json, one row each, each followed by the same eval of
    the previous bundled model (``results/previous_model``) where that was measured."""
    names = sorted({p.name for folder in (RESULTS, PREVIOUS) for p in folder.glob("eval_*.json")})
    if not names:
        return None
    now, before = training_steps(WEIGHTS), training_steps(PREVIOUS)
    lines = [
        "## tiny-shapes quality on held-out prompts (`python -m cascade eval`)",
        "",
        "Means with 95% intervals (Wilson for accuracies). Bars of issue 3: colour ≥ 90%, shape ≥ 75%, "
        f"motion ≥ 80%, one object ≥ 95%. Each eval of the bundled model (step {now}) is followed by the same "
        f"eval of the model it was fine-tuned from (step {before}, `benchmarks/results/previous_model`).",
        "",
        "| model | steps trained | mode | window | stride | blocks | steps | cache | clips | colour | shape | motion | one object | flicker |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        lines += [_eval_row(json.loads((folder / name).read_text()), steps)
                  for folder, steps in ((RESULTS, now), (PREVIOUS, before)) if (folder / name).exists()]
    return "\n".join(lines) + "\n"


def _eval_row(r: dict, steps: str) -> str:
    s = r["summary"]
    flicker = s.get("flicker", {}).get("mean")
    return (f"| {r['model']} | {steps} | {r['mode']}{' joint' if r.get('joint') else ''} | {r['window']} | "
            f"{r['stride']} | {r['blocks']} | {r['steps']} | {_cache(r)} | {r['prompts']} | {_cell(s, 'colour')} | "
            f"{_cell(s, 'shape')} | {_cell(s, 'motion')} | {_cell(s, 'one_object')} | "
            f"{'–' if flicker is None else f'{flicker:.3f}'} |")


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
