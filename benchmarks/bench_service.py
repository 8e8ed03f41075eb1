"""Warm start: is the first comparison a user makes timed like every later one?

``python -m benchmarks.bench_service --json benchmarks/results/warm_start.json``

Each case runs in a fresh process (cold imports, no model loaded, no pool started): a new
``Service``, optionally ``warm_up()``, then the default comparison (``Service.default_request``)
``--runs`` times in a row. It reports, per comparison, the wall time the caller waited and each
run's own latencies, for a service that was warmed up and one that was not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.output import write_report

PROMPT = "a red circle moving right"


def one_case(warm: bool, runs: int) -> dict:
    """In this (fresh) process: the default comparison ``runs`` times on a new Service."""
    started = time.perf_counter()
    from cascade.service import Service

    with Service() as service:
        request = service.default_request(PROMPT)
        warm_up_s = None
        if warm:
            t = time.perf_counter()
            service.warm_up(request)
            warm_up_s = time.perf_counter() - t
        comparisons = []
        for _ in range(runs):
            t = time.perf_counter()
            result = service.compare(request)
            s = result.stats
            comparisons.append({"wall_s": time.perf_counter() - t, "serial_latency_s": s["serial"]["latency_s"],
                                "cascade_latency_s": s["cascade"]["latency_s"], "speedup": s["speedup"],
                                "cascade_time_to_first_block_s": s["cascade"]["time_to_first_block_s"]})
    return {"warm_up": warm, "warm_up_s": warm_up_s, "process_s": time.perf_counter() - started,
            "executor": s["cascade"]["executor"], "workers": s["cascade"]["workers"], "comparisons": comparisons}


def markdown(report: dict) -> str:
    lines = ["## Warm start (`python -m benchmarks.bench_service`)", "",
             f"The default comparison ({report['cases'][0]['executor']}, {report['cases'][0]['workers']} workers), "
             f"{report['runs']} times in a row on a new Service in a fresh process:", "",
             "| service | warm-up s | comparison | wall s | serial latency s | cascade latency s | speedup |",
             "|---|---|---|---|---|---|---|"]
    for case in report["cases"]:
        name = "warmed up (`warm_up()`)" if case["warm_up"] else "not warmed up"
        for index in (0, len(case["comparisons"]) - 1):
            c = case["comparisons"][index]
            warm = "–" if case["warm_up_s"] is None else f"{case['warm_up_s']:.2f}"
            lines.append(f"| {name} | {warm} | {'first' if index == 0 else f'#{index + 1}'} | {c['wall_s']:.2f} | "
                         f"{c['serial_latency_s']:.3f} | {c['cascade_latency_s']:.3f} | {c['speedup']:.2f} |")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--case", choices=("warm", "cold"), help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(one_case(args.case == "warm", args.runs)))
        return 0
    cases = []
    for case in ("warm", "cold"):
        done = subprocess.run([sys.executable, "-m", "benchmarks.bench_service", "--json", str(args.json),
                               "--runs", str(args.runs), "--case", case], capture_output=True, text=True, check=True)
        cases.append(json.loads(done.stdout.strip().splitlines()[-1]))
    report = {"runs": args.runs, "cases": cases}
    write_report(args.json, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
