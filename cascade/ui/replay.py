"""The race replay: every run's video (two, or three with the sequence run) revealed block by block at the moments their frames were ready,
on one clock, slowed down so a visitor can follow. It draws in the browser (``race.js``, with
``race.html`` and ``race.css`` beside it, read when the page is built); the server only sends
``replay_data`` once."""

from importlib.resources import files

import gradio as gr

from ..service import CompareResult, run_label
from .previews import sprite, thumbnail

REPLAY_SECONDS = 6.0  # the slower run is replayed over about this long (never faster than it ran)


def race_replay(elem_id: str = "race") -> gr.HTML:
    """The replay's component, empty until ``replay_data`` arrives."""
    here = files(__package__)
    return gr.HTML(value=None, html_template=(here / "race.html").read_text(),
                   css_template=(here / "race.css").read_text(), js_on_load=(here / "race.js").read_text(),
                   elem_id=elem_id)


def replay_data(result: CompareResult, counts: dict[str, list[int]]) -> dict:
    """What the race replay needs: every run's frames, frames per block and arrival times, and
    one slow-down that stretches the slower run to about REPLAY_SECONDS (never speeds it up)."""
    runs = []
    for name, run in result.runs.items():
        height, width = thumbnail(run.frames[0]).shape[:2]
        runs.append({"label": run_label(name, run.stats["workers"]), "sprite": sprite(run.frames, counts[name]), "width": width,
                     "height": height, "counts": counts[name], "shown_s": run.stats["blocks_shown_s"],
                     "switches": [switch["block"] for switch in run.stats["switches"]]})
    end = max(run["shown_s"][-1] for run in runs)
    return {"runs": runs, "slow": max(1.0, REPLAY_SECONDS / end), "fps": result.serial.stats["fps_video"]}
