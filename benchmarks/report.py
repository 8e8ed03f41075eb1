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
    python -m cascade eval --mode cascade --window 2 --stride 2 --prompts 96 --executor batched \
        --json benchmarks/results/eval_cascade_w2s2.json   # and W2 s1, W2 s3; --bwcache; --steps 16 with s2, s3, s4
    python -m benchmarks.plan_table                                            # the model's plans.json from them
    python -m benchmarks.bench_visitor                                         # alone on the machine
    python -m cascade bench --json benchmarks/results/cascade.json --markdown benchmarks/results/cascade.md
    python -m benchmarks.bench_service --json benchmarks/results/warm_start.json
    python -m benchmarks.bench_app --runs 5 --out benchmarks/results
    python -m benchmarks.bench_load                                            # alone on the machine
    python -m benchmarks.bench_placements                                      # alone on the machine
    python -m benchmarks.bench_cache
    python -m benchmarks.bench_switch --json benchmarks/results/bench_switch.json
    python -m benchmarks.bench_gpu --json benchmarks/results/bench_gpu.json   # on a GPU machine
    bash benchmarks/device_check.sh     # on a GPU machine: bench_gpu, device_check.json/.md, then this report
    python -m benchmarks.report
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SECTIONS = ("bench_visitor.md", "cascade.md", "bench_placements.md", "warm_start.md", "bench_app.md", "bench_load.md", "bench_gpu.md", "device_check.md", "bench_cache.md", "bench_switch.md")

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


def sequence_section() -> str | None:
    """Sequence parallelism against serial: the visitor bench's rows that made the third run
    (``bench_visitor.json``, ``"sequence"`` of each row)."""
    path = RESULTS / "bench_visitor.json"
    rows = [r for r in json.loads(path.read_text())["rows"] if "sequence" in r] if path.exists() else []
    if not rows:
        return None
    lines = [
        "## Sequence parallelism against serial (`python -m benchmarks.bench_visitor`)",
        "",
        "The page's third run on the same comparisons as the table above: the serial schedule with every forward's "
        "tokens split over the pool's workers, against serial on one worker of the same kind. Bound: with free "
        "communication (the workers × BWCache's cut). With communication: serial's latency over its share of "
        "serial's time plus the seconds a worker spent in collectives, averaged over the workers, as measured in "
        "the same run (`cascade.plan.bound_with_communication`). Communication share: the busiest worker's seconds "
        "in collectives over the sequence run's latency. Frames: the largest difference of any pixel from "
        "serial's, in /255.",
        "",
        "| steps | BWCache | blocks | workers | serial s | sequence s | speedup | bound | bound with communication "
        "| communication share | frames vs serial |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        q = r["sequence"]
        cache = "–" if r["bwcache"] is None else f"δ {r['bwcache']:g}"
        workers = f"{q['workers']}" + (f" × {q['threads']} thread{'s' if q['threads'] != 1 else ''}" if q["threads"] else "")
        lines.append(f"| {r['steps']} | {cache} | {q['blocks']} | {workers} | {q['serial_latency_s']:.3f} | "
                     f"{q['sequence_latency_s']:.3f} | **{q['speedup']:.2f}×** | {q['bound']:.2f}× | "
                     f"{q['bound_with_communication']:.2f}× | {q['communication_share']:.0%} | "
                     f"max {q['max_abs_diff_255']}/255 |")
    return "\n".join(lines) + "\n"


# sections rendered here from a script's JSON, each placed after that script's own table
RENDERED_AFTER = {"bench_visitor.md": sequence_section}


CARD_START, CARD_END = "<!-- model card quality: benchmarks/report.py -->", "<!-- end model card quality -->"


def model_card_table() -> str:
    """The README model card's quality table: every plain evaluation of the bundled model, with
    McNemar's p of each accuracy against serial at the same steps."""
    from .bench_visitor import evaluation, paired_quality

    lines = ["  | run | steps | colour (p) | shape (p) | motion (p) | one object in ≥ half the frames (p) |", "  |---|---|---|---|---|---|"]
    for path in sorted(RESULTS.glob("eval_*.json"), key=lambda p: (json.loads(p.read_text())["steps"], p.name)):
        r = json.loads(path.read_text())
        if r.get("model") != "tiny-shapes" or "items" not in r or "switch_block" in r:
            continue
        serial = evaluation(RESULTS, mode="serial", steps=r["steps"], recache=True, bwcache=None)
        run = "serial" if r["mode"] == "serial" else f"cascade W{r['window']} s{r['stride']}"
        run += f", BWCache δ={r['bwcache']:g}" if r.get("bwcache") is not None else ""
        q = paired_quality({"source": path.name, **r}, serial)
        cells = [f"{q[k]['cascade']:.1%} ({q[k]['mcnemar_p']:.2f})" for k in ("colour", "shape", "motion", "one_object")]
        lines.append(f"  | {run} | {r['steps']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_model_card() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(CARD_START, 1)
    _, tail = rest.split(CARD_END, 1)
    readme.write_text(f"{head}{CARD_START}\n{model_card_table()}\n{CARD_END}{tail}")


def main() -> int:
    write_model_card()
    parts = [HEADER]
    evals = eval_section()
    if evals:
        parts.append(evals)
    for name in SECTIONS:
        path = RESULTS / name
        if path.exists():
            parts.append(path.read_text().strip() + "\n")
        rendered = RENDERED_AFTER[name]() if name in RENDERED_AFTER else None
        if rendered:
            parts.append(rendered)
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"wrote {ROOT / 'BENCHMARKS.md'} from {len(parts) - 1} section(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
