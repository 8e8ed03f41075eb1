"""A comparison as the page shows it: a cleared page (the sequence run's column shown only when
it runs), a preview strip per run as each block's frames are final, then the videos, figures,
timeline, replay and downloads."""

import html
import math

import gradio as gr

from ..service import COMPARE_RUNS, GenerateRequest, run_label
from .previews import block_strip, thumbnail
from .replay import replay_data
from .tables import quality_markdown, run_table, speedup_markdown, unknown_note
from .timeline import timeline_figure
from .warm_up import Backend

# the page's outputs, in the order every update lists them (app.py builds a component per name)
OUTPUTS = ("note", "speedup", *(f"{run}_{part}" for part in ("video", "live", "stats") for run in COMPARE_RUNS),
           "sequence_column", "quality", "timeline", "race", "downloads", "figures")
CLEARED = dict(note="", speedup="Running…", quality="", **{f"{run}_stats": "" for run in COMPARE_RUNS})


def update(**values) -> tuple:
    """One page update: the outputs named get these values, every other keeps what it shows."""
    unknown = set(values) - set(OUTPUTS)
    assert not unknown, unknown
    return tuple(values.get(name, gr.skip()) for name in OUTPUTS)


def page_updates(backend: Backend, request: GenerateRequest, progress):
    """The page's updates for one comparison (``OUTPUTS``), with the progress bar's steps."""
    num_blocks, runs = request.blocks, request.runs
    tiles = {name: {} for name in runs}
    counts = {name: [] for name in runs}
    shape = None
    cleared = {**CLEARED, "sequence_column": gr.Column(visible="sequence" in runs)}  # shown when it runs
    yield tuple(cleared.get(name) for name in OUTPUTS)
    for batch in backend.compare_events(request):
        for event in batch:
            if event[0] == "block":
                _, run, block, frames, _ = event
                tiles[run][block] = thumbnail(frames[-1])
                counts[run].append(len(frames))
                shape = tiles[run][block].shape[:2]
        progresses = [event for event in batch if event[0] == "progress"]
        if progresses:
            _, fraction, message = progresses[-1]
            # the service makes the runs in turn, each an equal share of the progress
            running = runs[max(0, math.ceil(fraction * len(runs)) - 1)]
            progress(fraction, desc=f"{run_label(running, request.workers)}: {message}")
        if batch[-1][0] == "done":
            result = batch[-1][1]
            break
        if any(event[0] == "block" for event in batch):
            yield update(**{f"{name}_live": block_strip(tiles[name], num_blocks, shape)
                            for name in runs if tiles[name]})
    stats = result.stats
    words = result.serial.unknown_words
    if words:
        # toasts render (sanitized) HTML: escaped, a word reads as typed
        gr.Warning("The model does not know: " + ", ".join(html.escape(w) for w in dict.fromkeys(words)))
    yield update(note=unknown_note(words), speedup=speedup_markdown(stats),
                 **{f"{name}_video": str(result.files[f"{name}.mp4"]) for name in runs},
                 **{f"{name}_live": block_strip(tiles[name], num_blocks, shape) for name in runs},
                 **{f"{name}_stats": run_table(stats[name]) for name in runs},
                 quality=quality_markdown(stats), timeline=timeline_figure(stats), race=replay_data(result, counts),
                 downloads=[str(result.files["side_by_side.mp4"]), str(result.files["stats.json"])], figures=stats)
