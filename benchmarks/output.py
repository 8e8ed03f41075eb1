"""What a benchmark script leaves behind: its report as JSON and its table as Markdown beside it."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(json_path: Path, report: dict, table: str) -> None:
    """``report`` to ``json_path``, ``table`` to the same name with ``.md``, and the table to stdout."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    json_path.with_suffix(".md").write_text(table)
    print(table)
