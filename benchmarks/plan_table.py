"""``python -m benchmarks.plan_table``: the bundled model's measured quality table, from the
committed held-out evaluations (``benchmarks/results/eval_*.json``, written by ``python -m cascade
eval --prompts 96``), into its folder's ``plans.json``, where the service chooses plans from
(``cascade.plan.choose_plan``). Only the scores travel: the package reads no benchmark files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cascade.model.presets import MEASURED_PLANS_FILE, WEIGHTS_ROOT
from cascade.plan import QUALITY_SCORES

RESULTS = Path(__file__).parent / "results"


def plan_entry(report: dict, source: str) -> dict:
    summary = report["summary"]
    return {"mode": report["mode"], "steps": report["steps"], "window": report["window"], "stride": report["stride"],
            "recache": report["recache"], "joint": report["joint"], "bwcache": report.get("bwcache"),
            "blocks": report["blocks"], "pairs": report["prompts"], "source": source,
            "scores": {k: summary[k]["mean"] for k in QUALITY_SCORES}}


def table(model: str, results: Path = RESULTS) -> list[dict]:
    entries = []
    for path in sorted(results.glob("eval_*.json")):
        report = json.loads(path.read_text())
        if report.get("model") == model and "summary" in report and "switch_block" not in report:
            entries.append(plan_entry(report, path.name))
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-shapes")
    args = parser.parse_args()
    out = WEIGHTS_ROOT / args.model / MEASURED_PLANS_FILE
    out.write_text(json.dumps({"model": args.model, "plans": table(args.model)}, indent=1) + "\n")
    print(f"{len(table(args.model))} measured plans -> {out}")


if __name__ == "__main__":
    main()
