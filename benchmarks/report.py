"""Assemble BENCHMARKS.md from the tables the benchmark scripts wrote to benchmarks/results/.

    python -m cascade bench --json benchmarks/results/cascade.json --markdown benchmarks/results/cascade.md
    python -m benchmarks.bench_cache
    python -m benchmarks.report
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SECTIONS = ("cascade.md", "bench_cache.md")

HEADER = """# Benchmarks

Every table below is written by a script; none is edited by hand. Regenerate with the commands in
`benchmarks/report.py`. Timings are from the machine named in each section and are only
comparable within a section.
"""


def main() -> int:
    parts = [HEADER]
    for name in SECTIONS:
        path = RESULTS / name
        if path.exists():
            parts.append(path.read_text().strip() + "\n")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"wrote {ROOT / 'BENCHMARKS.md'} from {len(parts) - 1} section(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
