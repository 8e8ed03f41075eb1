"""The worlds that models are trained on and that come with an automatic judge, by the name a
model folder gives (``"world"`` in its model.json, ``CascadeModel.world``).

A world builds on the model (it trains one), so the model side only names its world and never
imports it; this registry sits above both, and each world fills in its entry: its name and its
judge, ``judge(frames uint8 [T, H, W, 3], prompt) -> scores by name``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .toy import analyzer, data

Judge = Callable[[np.ndarray, str], dict]

JUDGES: dict[str, Judge] = {data.WORLD: analyzer.judge}


def judge_of(world: str | None) -> Judge | None:
    """The judge of ``world``; None for a model without one; a ValueError for a world not known here."""
    if world is None:
        return None
    if world not in JUDGES:
        raise ValueError(f"unknown world {world!r} in model.json (known: {', '.join(JUDGES)})")
    return JUDGES[world]
