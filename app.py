"""The comparison app (a Hugging Face Space): one prompt, run serially and with Block Cascading.

``python app.py`` serves the page. It lays out and wires only: every run goes through one
``cascade.service.Service``, created when the app starts, warmed up, and shared by every visitor.
Gradio's queue runs one comparison at a time (one ``concurrency_id``, limit 1), so two runs never
share the backend and the timings stay honest; at most ``QUEUE_SIZE`` wait behind it, and the next
visitor is told the queue is full. Bounds on a request (blocks, steps, which models) are the
Service's (``Service.limits``); the page offers and enforces them. ``build_demo(service)`` builds
the page for any such Service, so tests and benchmarks launch it with a small one. Ctrl-C closes
the Service on the way out: a run in progress fails, and no worker or shared memory is left.
"""

import argparse
import base64
import html
import io
import json
import logging
import queue
import re
import reprlib
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr
import numpy as np
import plotly.colors
import plotly.graph_objects as go
from PIL import Image

from cascade.service import MAX_PROMPT_CHARS, RUN_LABELS, GenerateRequest, Service, first_line, parse_prompt_schedule

EXAMPLES_FILE = Path(__file__).parent / "examples" / "prompts.json"
BACKEND = "backend"  # the one concurrency group every comparison queues in
OUTPUT_TTL_S = 3600  # a request's folder (and Gradio's copies of its files) lives an hour
CACHE_SWEEP_S = 600
SEED_MAX = 2**31 - 1
# Visitors who may wait behind the one running (Gradio's queue); the next is told the queue is full.
# At the defaults a 2-core CPU box serves about 24 comparisons a minute (benchmarks/bench_load.py),
# so the last in line waits under a minute.
QUEUE_SIZE = 16
THRESHOLD_MAX = 1.0
THUMB_MAX_SIDE = 128  # replay and preview tiles: small enough for any model's frames
REPLAY_SECONDS = 6.0  # the slower run is replayed over about this long (never faster than it ran)
BACKENDS = {"pool": "distributed", "batched": "batched"}
VARIANTS = ("causal", "joint")
RUNS = ("serial", "cascade")
# Warming up while Gradio starts made the first comparison 4.7x slower than later ones on a
# 2-core box (both compete for the cores); warming up first serves the page later (bench_app: 31 s, not 16 s).
WARM_UP = "before"
PLANNED_SETTINGS = slice(5, 9)  # window, stride, variant, recache among make_request's settings after the prompt

HEADER = """
# Serial block-causal video diffusion vs Block Cascading

Block-causal video models such as [Self-Forcing](https://arxiv.org/abs/2506.08009) make a video
block by block, and each block waits until the one before it is fully denoised: the whole video is one
serial chain. [Block Cascading](https://arxiv.org/abs/2511.20426) starts each block from its
predecessor's partially denoised context, so several blocks denoise at once on different workers;
below, both run the same prompt and seed on the same backend.
"""

CSS = """
#serial-live img, #cascade-live img, #serial-video video, #cascade-video video, #race canvas {
  image-rendering: pixelated;
}
#speedup h2 { margin: 0.2em 0; }
"""

# The race replay draws in the browser: the frames travel once as two small sprite images, and
# requestAnimationFrame reveals each side's blocks at their measured arrival times on one shared,
# slowed-down clock, with no server work (so replaying never touches the queue or the backend).
RACE_TEMPLATE = """
<div class="race">
  <div class="race-bar">
    <button class="race-play" type="button" disabled>&#9654; Play the race</button>
    <span class="race-clock">Run a comparison, then replay it here.</span>
  </div>
  <div class="race-sides">
    <figure><figcaption></figcaption><canvas></canvas></figure>
    <figure><figcaption></figcaption><canvas></canvas></figure>
  </div>
</div>
"""

RACE_CSS = """
.race-bar { display: flex; gap: 1em; align-items: center; margin-bottom: 0.5em; }
.race-play { padding: 0.4em 1.2em; border-radius: 6px; border: 1px solid var(--border-color-primary);
  background: var(--button-primary-background-fill); color: var(--button-primary-text-color); cursor: pointer; }
.race-play:disabled { opacity: 0.5; cursor: default; }
.race-sides { display: flex; gap: 1em; }
.race-sides figure { flex: 1; margin: 0; }
.race-sides canvas { width: 100%; max-width: 420px; display: block; margin: auto; background: #111; }
"""

RACE_JS = """
let frame = null;
const VIEW = 4;  // the viewer shows the newest block's frames VIEW times a tile's size
function paint(canvas, sprite, run, t, tau, fps) {
  const w = run.width, h = run.height, n = run.counts.length;
  const width = Math.max(n, VIEW) * w;
  canvas.width = width; canvas.height = (VIEW + 1) * h + 18;
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  ctx.fillStyle = '#111'; ctx.fillRect(0, 0, canvas.width, canvas.height);
  const arrived = run.shown_s.filter(s => s <= t).length;
  if (arrived > 0) {  // the newest arrived block plays at the video's frame rate
    const b = arrived - 1, f = Math.floor(tau * fps) % run.counts[b];
    ctx.drawImage(sprite, f * w, b * h, w, h, (width - VIEW * w) / 2, 0, VIEW * w, VIEW * h);
  }
  ctx.font = '11px sans-serif'; ctx.textAlign = 'center';
  for (let b = 0; b < n; b++) {  // one tile per block (its last frame), shown from its arrival on
    const x = b * w, y = VIEW * h + 2;
    if (b < arrived) {
      ctx.drawImage(sprite, (run.counts[b] - 1) * w, b * h, w, h, x, y, w, h);
      ctx.fillStyle = '#ddd'; ctx.fillText(run.shown_s[b].toFixed(2) + ' s', x + w / 2, y + h + 13);
    } else {
      ctx.fillStyle = '#2a2a2a'; ctx.fillRect(x + 1, y + 1, w - 2, h - 2);
    }
    if (run.switches.includes(b)) {  // a yellow edge before the first block under a new prompt
      ctx.fillStyle = '#ffd400'; ctx.fillRect(x, y, 2, h);
    }
  }
}
function setup() {
  cancelAnimationFrame(frame);
  const data = props.value, button = element.querySelector('.race-play');
  const clock = element.querySelector('.race-clock');
  const canvases = [...element.querySelectorAll('canvas')];
  const captions = [...element.querySelectorAll('figcaption')];
  element.dataset.state = data && data.runs ? 'ready' : 'empty';
  if (!data || !data.runs) { button.disabled = true; return; }
  const sprites = data.runs.map(run => Object.assign(new Image(), {src: run.sprite}));
  const end = Math.max(...data.runs.map(run => run.shown_s[run.shown_s.length - 1]));
  const show = (t, tau) => data.runs.forEach((run, i) => paint(canvases[i], sprites[i], run, t, tau, data.fps));
  data.runs.forEach((run, i) => { captions[i].textContent = run.label; });
  sprites.forEach(sprite => sprite.addEventListener('load', () => show(0, 0)));
  clock.textContent = 'Both runs on one clock, ' + data.slow.toFixed(1) + '\\u00d7 slower than they ran.';
  button.disabled = false;
  button.onclick = () => {
    cancelAnimationFrame(frame);
    const start = performance.now();
    element.dataset.state = 'playing';
    const step = now => {
      const tau = (now - start) / 1000, t = Math.min(tau / data.slow, end);
      show(t, tau);
      clock.textContent = 'run time ' + t.toFixed(2) + ' s of ' + end.toFixed(2) + ' s, replayed '
        + data.slow.toFixed(1) + '\\u00d7 slower';
      if (t < end) { frame = requestAnimationFrame(step); } else { element.dataset.state = 'done'; }
    };
    frame = requestAnimationFrame(step);
  };
}
setup();
watch('value', setup);
"""


# --- what the page offers ----------------------------------------------------------------


def load_examples(path: Path = EXAMPLES_FILE, kind: str = "prompts") -> list[str]:
    """The example prompts, or with ``kind="prompt_schedules"`` the example prompt schedules
    (the README and the tests read the same file)."""
    return json.loads(Path(path).read_text())[kind]


@dataclass(frozen=True)
class Choices:
    """What the page offers on this machine: its default request (every setting concrete), the
    presets that can run here, those that cannot (with what they need), the most workers, and
    the service's bounds on blocks and steps (``Service.limits``)."""

    defaults: GenerateRequest
    runnable: tuple[str, ...]
    unavailable: tuple[tuple[str, str], ...]
    max_workers: int
    max_blocks: int
    max_steps: int


def page_choices(service: Service, defaults: GenerateRequest | None = None) -> Choices:
    """The page's defaults: the service's best request for this machine unless given, with
    every setting made concrete for its model."""
    limits = service.limits
    if limits.blocks is None or limits.steps is None or limits.model_paths:
        raise ValueError("a public page needs a Service with bounds on blocks and steps and no model paths "
                         "(cascade.service.Limits)")
    presets = service.presets()
    runnable = tuple(p["name"] for p in presets if p["runnable"])
    request = defaults or service.default_request(load_examples()[0])
    request = service.resolve(replace(request, mode="cascade"))
    # what a preset needs, on one line: the page's messages are one line (the rest names files to fetch)
    return Choices(defaults=request, runnable=runnable,
                   unavailable=tuple((p["name"], p["needs"].splitlines()[0]) for p in presets if not p["runnable"]),
                   max_workers=max(2, request.workers), max_blocks=limits.blocks, max_steps=limits.steps)


# Checks of what the page or an API client sent: any JSON value may arrive, of any length, so
# each names the setting and quotes the value cut short (reprlib).


def whole(name: str, value, low: int, high: int) -> int:
    """A setting that must be a whole number in [low, high]; ValueError with one clear line."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not value.is_integer()):  # NaN and infinities are not whole either
        raise ValueError(f"{name} must be a whole number, got {reprlib.repr(value)}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {reprlib.repr(int(value))}")
    return int(value)


def flag(name: str, value) -> bool:
    """A setting that must be true or false (a checkbox); "false" or 0 from an API client are not."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {reprlib.repr(value)}")
    return value


def one_of(name: str, value, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {reprlib.repr(value)}")
    return value


def runnable_preset(choices: Choices, preset) -> str:
    """A preset the page offers; only these names reach the service (never a path)."""
    if isinstance(preset, str) and preset in choices.runnable:
        return preset
    needs = dict(choices.unavailable).get(preset) if isinstance(preset, str) else None
    raise ValueError(f"the preset {preset!r} cannot run here: it needs {needs}" if needs else
                     f"unknown preset {reprlib.repr(preset)}; choose one of {', '.join(choices.runnable)}")


def make_request(choices: Choices, prompt, preset, blocks, steps, backend, workers, window, stride,
                 variant, recache, bwcache, threshold, seed, prompt_schedule="") -> GenerateRequest:
    """The request the page's (or the API's) settings describe; ValueError for anything a run
    could not take, with the same message on the page and through the API. A ``prompt_schedule``
    (its text form, one ``block: prompt`` per line) replaces the prompt. ``window``, ``stride``,
    ``variant`` and ``recache`` left None are planned by the service for the request's own steps
    and backend."""
    if not isinstance(prompt_schedule, str):
        raise ValueError(f"the prompt schedule must be text, got {reprlib.repr(prompt_schedule)}")
    schedule = parse_prompt_schedule(prompt_schedule) if prompt_schedule.strip() else None
    if schedule is not None:
        prompt = ""
    elif prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        raise ValueError("the prompt is empty: describe a video, e.g. 'a red circle moving right'")
    preset = runnable_preset(choices, preset)
    backend = one_of("backend", backend, BACKENDS)
    variant = None if variant is None else one_of("variant", variant, VARIANTS)
    recache = None if recache is None else flag("recache", recache)
    bwcache = flag("bwcache", bwcache)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= THRESHOLD_MAX:
        raise ValueError(f"the BWCache threshold must be a number from 0 to {THRESHOLD_MAX}, "
                         f"got {reprlib.repr(threshold)}")
    steps = whole("steps", steps, 1, choices.max_steps)
    stride = None if stride is None else whole("stride", stride, 1, choices.max_steps + 1)
    if stride is not None and stride > steps + (recache is not False):
        raise ValueError(f"stride must be at most the items per block ({steps} steps"
                         f"{' + recache' if recache is not False else ''}), got {stride}")
    request = GenerateRequest(
        prompt=prompt, prompt_schedule=schedule, mode="cascade", model=preset,
        blocks=whole("blocks", blocks, 1, choices.max_blocks), steps=steps,
        window=None if window is None else whole("window", window, 1, choices.max_blocks), stride=stride,
        recache=recache, joint=None if variant is None else variant == "joint", executor=BACKENDS[backend],
        workers=whole("workers", workers, 1, choices.max_workers), seed=whole("seed", seed, 0, SEED_MAX),
        # a pool's workers keep the default's threads each (one core each on a CPU box); one device
        # batched uses all of it, as the service's own one-device default does
        threads=choices.defaults.threads if backend == "pool" else None,
        bwcache=bwcache, bwcache_threshold=float(threshold), kv_exchange=choices.defaults.kv_exchange)
    request.validate()
    return request


# --- the backend, shared by every visitor ------------------------------------------------------


class Backend:
    """The Service and its warm-up. Every comparison waits for the warm-up, so the first visitor
    is timed like the hundredth. ``background``: warm up while Gradio starts and serves (the
    page is up sooner, but the two compete for the cores); else before (``build_demo`` returns
    once the backend is warm)."""

    def __init__(self, service: Service, choices: Choices, background: bool = True):
        self.service = service
        self.choices = choices
        self._ready = threading.Event()
        self._failure: Exception | None = None
        if background:
            threading.Thread(target=self._warm_up, name="warm-up", daemon=True).start()
        else:
            self._warm_up()

    def _warm_up(self) -> None:
        try:
            self.service.warm_up(self.choices.defaults)
        except Exception as error:  # reported to every request instead of a dead page
            self._failure = error
        finally:
            self._ready.set()

    def wait_until_ready(self) -> None:
        self._ready.wait()
        if self._failure is not None:
            raise RuntimeError(f"the backend did not start: {self._failure}")

    def compare_events(self, request: GenerateRequest):
        """Runs the comparison in its own thread and yields, as they come, lists of events:
        ("progress", fraction, message), ("block", run, index, frames, t) and at last
        ("done", result). Events that arrived together come as one list (one page update)."""
        events = queue.SimpleQueue()

        def work():
            try:
                result = self.service.compare(
                    request, progress=lambda f, message: events.put(("progress", f, message)),
                    on_block=lambda run, block, frames, t: events.put(("block", run, block, frames, t)))
                events.put(("done", result))
            except Exception as error:  # raised again in the page's thread, where Gradio reports it
                events.put(("error", error))

        threading.Thread(target=work, name="compare", daemon=True).start()
        while True:
            batch = [events.get()]
            while not events.empty():
                batch.append(events.get())
            for event in batch:
                if event[0] == "error":
                    raise event[1]
            yield batch
            if batch[-1][0] == "done":
                return


def user_error(error: Exception) -> gr.Error:
    """One clear line for the page and the API: bad input as it is, a backend failure named as
    one, by its first line (the whole of it, a worker's traceback too, goes to the server's log).
    Escaped: toasts render HTML, and a message may quote what a visitor sent."""
    if isinstance(error, ValueError):
        text = str(error)
    else:
        logging.getLogger(__name__).error("a comparison failed: %s", error, exc_info=error)
        text = f"The backend failed: {first_line(error)}"
    return gr.Error(html.escape(text, quote=False), print_exception=False)


# --- pictures and figures (pure formatting) ----------------------------------------------------


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """A frame no larger than THUMB_MAX_SIDE on its long side (tiny models' frames stay as they are)."""
    height, width = frame.shape[:2]
    scale = THUMB_MAX_SIDE / max(height, width)
    if scale >= 1:
        return frame
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))


def block_strip(tiles: dict[int, np.ndarray], num_blocks: int, tile_shape: tuple[int, int]) -> np.ndarray:
    """One tile per block, left to right: the block's last frame once it is final, else dark."""
    height, width = tile_shape
    strip = np.full((height, width * num_blocks, 3), 42, dtype=np.uint8)
    for block, tile in tiles.items():
        strip[:, block * width:(block + 1) * width] = tile
    return strip


def sprite(frames: np.ndarray, counts: list[int]) -> str:
    """All frames as one PNG data URI: a row per block, its frames left to right."""
    thumbs = [thumbnail(frame) for frame in frames]
    height, width = thumbs[0].shape[:2]
    sheet = np.zeros((height * len(counts), width * max(counts), 3), dtype=np.uint8)
    first = 0
    for block, count in enumerate(counts):
        for i in range(count):
            sheet[block * height:(block + 1) * height, i * width:(i + 1) * width] = thumbs[first + i]
        first += count
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def replay_data(result, counts: dict[str, list[int]]) -> dict:
    """What the race replay needs: both runs' frames, frames per block and arrival times, and
    one slow-down that stretches the slower run to about REPLAY_SECONDS (never speeds it up)."""
    runs = []
    for name in RUNS:
        run = getattr(result, name)
        height, width = thumbnail(run.frames[0]).shape[:2]
        runs.append({"label": RUN_LABELS[name], "sprite": sprite(run.frames, counts[name]), "width": width,
                     "height": height, "counts": counts[name], "shown_s": run.stats["blocks_shown_s"],
                     "switches": [switch["block"] for switch in run.stats["switches"]]})
    end = max(run["shown_s"][-1] for run in runs)
    return {"runs": runs, "slow": max(1.0, REPLAY_SECONDS / end), "fps": result.serial.stats["fps_video"]}


def percent(value) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def run_table(stats: dict) -> str:
    """The figures under each video."""
    cache = stats["bwcache"]
    reuse = f"{percent(cache['reuse_rate'])} (δ {cache['threshold']:g})" if cache["enabled"] else "off"
    threads = stats["threads"]
    rows = [("latency", f"{stats['latency_s']:.2f} s"), ("FPS", f"{stats['fps']:.1f}"),
            ("time to first block", f"{stats['time_to_first_block_s']:.2f} s"),
            ("forwards", f"{stats['forwards']}"), ("ticks", f"{stats['ticks']}"), ("cache reuse", reuse),
            ("backend", f"{stats['executor']}, {stats['workers']} worker{'s' if stats['workers'] != 1 else ''}"
                        + (f" × {threads} thread{'s' if threads != 1 else ''}" if threads else ""))]
    rows += [(f"switch at block {switch['block']}",
              f"{switch['latency_s']:.2f} s between blocks, {switch['forwards']} extra forwards")
             for switch in stats["switches"]]
    return "| figure | |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows)


def escape_markdown(text: str) -> str:
    """User text shown as typed inside Markdown: HTML escaped, Markdown's punctuation backslashed."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~>])", r"\\\1", html.escape(text))


def speedup_markdown(stats: dict) -> str:
    """The measured speedup beside the bound of the plan that ran, the plan and why, what the
    bound assumes, and how the speedup is counted."""
    serial, cascade, plan = stats["serial"], stats["cascade"], stats["plan"]
    return (f"## {stats['speedup']:.2f}× faster (at most {stats['ideal_speedup']:.2f}× with this plan here)\n"
            f"**{plan['summary']}.** Why this plan: {plan['reason']}.\n\n"
            f"“{escape_markdown(serial['prompt'])}”, seed {serial['seed']}, {serial['model']}, "
            f"{serial['blocks']} blocks × {serial['steps']} steps. "
            f"Measured: serial {serial['latency_s']:.2f} s ÷ cascade {cascade['latency_s']:.2f} s. "
            f"{plan['assumes'][0].upper()}{plan['assumes'][1:]}; the tick ratio, {serial['ticks']} ÷ {cascade['ticks']} "
            f"ticks = {stats['tick_ratio']:.2f}×, is what one worker per block in flight would reach. "
            f"Counted as {stats['counted_as']}.")


ANALYZER_ROWS = (("colour", "colour"), ("shape", "shape"), ("motion", "motion"), ("background", "background"),
                 ("one_object", "exactly one object"))


def quality_markdown(stats: dict) -> str:
    """PSNR and SSIM of the cascade against serial, and the analyzer's verdicts where it judges:
    on the whole video, or with prompt switches on each prompt's stretch of it."""
    figures = stats["quality"]
    psnr = figures["psnr_db"]
    psnr_text = "identical frames" if psnr == "inf" else f"PSNR {psnr:.1f} dB"
    lines = [f"**Quality, cascade vs serial:** {psnr_text}, SSIM {figures['ssim']:.3f}."]
    verdicts = figures.get("analyzer")
    if verdicts:
        lines += analyzer_table("analyzer (share of frames as the prompt asks)", [("", verdicts["serial"],
                                                                                 verdicts["cascade"])])
    segments = figures.get("analyzer_segments")
    if segments:
        lines += analyzer_table("analyzer per prompt (the block after a switch left out)", [
            (f"blocks {s['blocks'][0]}–{s['blocks'][1] - 1}, “{escape_markdown(s['prompt'])}”: ", s, c)
            for s, c in zip(segments["serial"], segments["cascade"])])
    return "\n".join(lines)


def analyzer_table(title: str, verdicts: list[tuple[str, dict, dict]]) -> list[str]:
    """Markdown lines: a row per score of each (row prefix, serial verdict, cascade verdict)."""
    lines = ["", f"| {title} | {RUN_LABELS['serial']} | {RUN_LABELS['cascade']} |", "|---|---|---|"]
    for prefix, serial, cascade in verdicts:
        lines += [f"| {prefix}{label} | {percent(serial[key])} | {percent(cascade[key])} |"
                  for key, label in ANALYZER_ROWS if serial.get(key) is not None or cascade.get(key) is not None]
        if "flicker" in serial:
            lines.append(f"| {prefix}flicker (lower is steadier) | {serial['flicker']:.4f} | {cascade['flicker']:.4f} |")
    return lines


def unknown_note(words: list[str]) -> str:
    """A visible note of the prompt's words the model does not know (escaped: a prompt may hold HTML)."""
    if not words:
        return ""
    listed = ", ".join(f"<code>{html.escape(word)}</code>" for word in dict.fromkeys(words))
    return f"<p class='unknown-words'>The model does not know these words, so they had no effect: {listed}</p>"


def lanes(entries: list[dict]) -> list[int]:
    """A lane per item so that items running at once on one worker (a batched forward) get rows
    of their own instead of hiding each other; one worker running items in turn needs one lane."""
    ends: dict[int, list[float]] = {}
    lane_of = [0] * len(entries)
    for i in sorted(range(len(entries)), key=lambda i: entries[i]["start"]):
        entry, worker_ends = entries[i], ends.setdefault(entries[i]["worker"], [])
        free = next((k for k, end in enumerate(worker_ends) if end <= entry["start"] + 1e-9), len(worker_ends))
        worker_ends[free:free + 1] = [entry["end"]]
        lane_of[i] = free
    return lane_of


def step_label(step) -> str:
    """A bar's label: the step, R for the block's recache, S for a prompt switch's recache."""
    if step == "recache":
        return "R"
    return "S" if str(step).startswith("switch@") else str(step)


def timeline_figure(stats: dict) -> go.Figure:
    """Both runs' forwards: a row per worker, a bar per work item from start to end, coloured by
    block and labelled with its step (``step_label``); hovering names it. A dashed line marks
    each prompt switch's moment in each run (its first forward under the new prompt)."""
    palette = plotly.colors.qualitative.Plotly
    rows, bars = [], {}
    for name in RUNS:
        entries = stats[name]["timeline"]
        for entry, lane in zip(entries, lanes(entries)):
            row = f"{RUN_LABELS[name]} · worker {entry['worker']}" + (f" ({lane + 1})" if lane else "")
            if row not in rows:
                rows.append(row)
            bars.setdefault(entry["block"], []).append((row, entry, name))
    figure = go.Figure()
    for block in sorted(bars):
        items = bars[block]
        figure.add_bar(
            orientation="h", name=f"block {block}", y=[row for row, _, _ in items],
            x=[e["end"] - e["start"] for _, e, _ in items], base=[e["start"] for _, e, _ in items],
            text=[step_label(e["step"]) for _, e, _ in items], textposition="inside", insidetextanchor="middle",
            marker_color=palette[block % len(palette)],
            customdata=[[RUN_LABELS[run], block, e["step"], e["worker"], e["start"], e["end"]] for _, e, run in items],
            hovertemplate="%{customdata[0]}<br>block %{customdata[1]}, step %{customdata[2]}<br>"
                          "worker %{customdata[3]}<br>%{customdata[4]:.3f} s → %{customdata[5]:.3f} s<extra></extra>")
    figure.update_layout(
        # tall enough for a row per worker and for the legend's entry per block
        barmode="overlay", height=max(120 + 34 * len(rows), 80 + 20 * len(bars)), margin=dict(l=10, r=10, t=30, b=40),
        legend=dict(traceorder="normal"), xaxis_title="seconds since the run started",
        uniformtext=dict(minsize=8, mode="hide"))
    figure.update_yaxes(categoryorder="array", categoryarray=rows, autorange="reversed")
    # each run's labels on a line of their own above the plot, so two close switches stay readable
    for level, name in enumerate(RUNS):
        for switch in stats[name]["switches"]:
            figure.add_vline(x=switch["at_s"], line_dash="dash", line_color="#b8860b")
            figure.add_annotation(x=switch["at_s"], y=1, yref="paper", yanchor="bottom", xanchor="left",
                                  yshift=2 + 16 * level, showarrow=False, font_size=11,
                                  text=f"{RUN_LABELS[name]}: prompt of block {switch['block']}")
    if figure.layout.shapes:
        figure.update_layout(margin_t=64)
    return figure


# --- the page ----------------------------------------------------------------------------------


def build_demo(service: Service, defaults: GenerateRequest | None = None, queue_size: int = QUEUE_SIZE,
               warm_up_in_background: bool = True) -> gr.Blocks:
    """The page and the ``compare`` API for ``service`` (warmed up in the background from now on).
    ``defaults``: the page's default settings (default: the service's best for this machine);
    ``queue_size``: comparisons that may wait at once (page and API together) before the next
    is refused with "Queue is full"; ``warm_up_in_background``: see ``Backend``."""
    choices = page_choices(service, defaults)
    backend = Backend(service, choices, background=warm_up_in_background)
    d = choices.defaults
    with gr.Blocks(title="Block Cascading vs serial", delete_cache=(CACHE_SWEEP_S, OUTPUT_TTL_S)) as demo:
        gr.Markdown(HEADER)
        with gr.Row(equal_height=True):
            prompt = gr.Textbox(label="Prompt", value=d.prompt, max_length=MAX_PROMPT_CHARS, scale=5,
                                elem_id="prompt", placeholder="a red circle moving right")
            compare_button = gr.Button("Compare", variant="primary", scale=1, elem_id="compare")
        gr.Examples(examples=[[p] for p in load_examples()], inputs=[prompt], cache_examples=False,
                    label="Examples (the bundled model's world: 8 colours, 3 shapes, 7 motions)",
                    examples_per_page=20)
        schedule = gr.Textbox(label="Prompt schedule (optional; replaces the prompt): one `block: prompt` per line, "
                                    "from block 0", lines=2, elem_id="prompt-schedule",
                              placeholder="0: a red circle moving right\n4: a blue circle moving right")
        gr.Examples(examples=[[p] for p in load_examples(kind="prompt_schedules")], inputs=[schedule],
                    cache_examples=False, label="Prompt schedules (the prompt switches mid-video)")
        settings = settings_panel(service, choices)
        note = gr.HTML(elem_id="note")
        speedup = gr.Markdown("Press **Compare** to run both pipelines.", elem_id="speedup")
        outputs = {}
        with gr.Row(equal_height=False):
            for name in RUNS:
                with gr.Column():
                    gr.Markdown(f"### {RUN_LABELS[name]}")
                    outputs[f"{name}_video"] = gr.Video(label=RUN_LABELS[name], elem_id=f"{name}-video",
                                                        autoplay=True, loop=True, interactive=False, height=300)
                    outputs[f"{name}_live"] = gr.Image(label="Blocks as they finished", elem_id=f"{name}-live",
                                                       format="png", interactive=False, height=96,
                                                       buttons=[])
                    outputs[f"{name}_stats"] = gr.Markdown(elem_id=f"{name}-stats")
        quality = gr.Markdown(elem_id="quality")
        timeline = gr.Plot(label="Timeline: who ran what, when (each bar a forward, labelled with its step; "
                                 "R = recache, S = re-encoding for a new prompt; dashed: prompt switches)",
                           elem_id="timeline")
        gr.Markdown("### Race replay\nBoth videos revealed block by block at the moments their frames were "
                    "ready, on one clock, slowed down so you can follow.")
        race = gr.HTML(value=None, html_template=RACE_TEMPLATE, css_template=RACE_CSS, js_on_load=RACE_JS,
                       elem_id="race")
        downloads = gr.File(label="Downloads: side-by-side video and every figure (stats.json)",
                            file_count="multiple", interactive=False, elem_id="downloads")
        with gr.Accordion("All figures", open=False):
            figures = gr.JSON(elem_id="figures")

        page_outputs = [note, speedup, outputs["serial_video"], outputs["cascade_video"], outputs["serial_live"],
                        outputs["cascade_live"], outputs["serial_stats"], outputs["cascade_stats"], quality,
                        timeline, race, downloads, figures]

        def run_page(prompt_text, schedule_text, planned, *values, progress=gr.Progress()):
            """The page's comparison: previews as blocks finish, then every figure. ``planned``: the
            service plans window, stride, variant and recache for the chosen backend and steps."""
            try:
                values = list(values)
                if planned is True:
                    values[PLANNED_SETTINGS] = [None] * len(values[PLANNED_SETTINGS])
                request = make_request(choices, prompt_text, *values, prompt_schedule=schedule_text)
                progress(0, desc="Waiting for the backend to warm up")
                backend.wait_until_ready()
                yield from page_updates(backend, request, progress)
            except Exception as error:  # noqa: BLE001 - every failure reaches the visitor as one line
                raise user_error(error) from None

        # the progress bar and the queue position show on the speedup line, so the previews stay visible
        gr.on([compare_button.click, prompt.submit], run_page, inputs=[prompt, schedule, *settings],
              outputs=page_outputs,
              api_visibility="private", concurrency_id=BACKEND, concurrency_limit=1, show_progress="full",
              show_progress_on=[speedup])
        gr.api(api_function(backend), api_name="compare", concurrency_id=BACKEND, concurrency_limit=1)
    return demo.queue(max_size=queue_size)


def settings_panel(service: Service, choices: Choices) -> list:
    """The plan checkbox, then the settings in the order ``make_request`` takes them after the prompt."""
    d = choices.defaults
    pool_default = d.executor == "distributed"
    with gr.Accordion("Settings", open=False, elem_id="settings"):
        with gr.Row():
            preset = gr.Dropdown(list(choices.runnable), value=d.model, label="Model preset", elem_id="preset")
            blocks = gr.Slider(1, choices.max_blocks, value=d.blocks, step=1, label="Video length (blocks)",
                               elem_id="blocks")
            steps = gr.Slider(1, choices.max_steps, value=d.steps, step=1, label="Steps per block", elem_id="steps")
        with gr.Row():
            backend = gr.Radio([(f"worker pool (one worker per {'GPU' if service.device == 'cuda' else 'core'})",
                                 "pool"), ("one device, batched", "batched")],
                               value="pool" if pool_default else "batched", label="Backend", elem_id="backend")
            workers = gr.Slider(1, choices.max_workers, value=d.workers if pool_default else 2, step=1,
                                label="Workers in the pool", elem_id="workers",
                                info="another count starts another pool (a few seconds, once)")
        planned = gr.Checkbox(value=True, elem_id="planned", label="Plan window, stride, variant and recache for "
                              "this backend and these steps (the fastest measured plan within 2 points of serial)")
        with gr.Row():
            window = gr.Slider(1, choices.max_blocks, value=d.window, step=1, label="Window (blocks in flight)",
                               elem_id="window")
            stride = gr.Slider(1, choices.max_steps + 1, value=d.stride, step=1, elem_id="stride",
                               label="Stride (steps before the next block starts)")
            variant = gr.Radio(list(VARIANTS), value="joint" if d.joint else "causal", label="Variant",
                               info="joint: blocks in flight attend to each other in one forward (one device)",
                               elem_id="variant")
            recache = gr.Checkbox(value=d.recache, label="Recache (a clean forward after each block)",
                                  elem_id="recache")
        with gr.Row():
            bwcache = gr.Checkbox(value=d.bwcache, label="BWCache (reuse block outputs between steps)",
                                  elem_id="bwcache")
            threshold = gr.Number(value=d.bwcache_threshold, minimum=0, maximum=THRESHOLD_MAX, step=0.05,
                                  label="BWCache threshold δ", elem_id="threshold")
            seed = gr.Number(value=d.seed, minimum=0, maximum=SEED_MAX, precision=0, label="Seed", elem_id="seed")
            randomize = gr.Button("Randomize seed", size="sm", elem_id="randomize")
        # client-side: a new seed needs no server round trip and never waits in the queue
        randomize.click(None, outputs=seed, js=f"() => Math.floor(Math.random() * {SEED_MAX})")
        gr.Markdown(presets_note(choices))
    return [planned, preset, blocks, steps, backend, workers, window, stride, variant, recache, bwcache, threshold, seed]


def presets_note(choices: Choices) -> str:
    d = choices.defaults
    backend = (f"a worker pool of {d.workers} workers" + (f", {d.threads} thread each" if d.threads == 1 else "")
               if d.executor == "distributed" else "one device, batched")
    lines = [f"The defaults are what runs best on this machine: {backend}, {d.blocks} blocks × {d.steps} steps; "
             f"planned for them: window {d.window}, stride {d.stride} (with the box above ticked, window, stride, "
             "variant and recache are planned anew for the backend and steps you choose)."]
    if choices.unavailable:
        lines.append("Presets that cannot run here: " + "; ".join(
            f"**{html.escape(name)}** (needs {html.escape(needs)})" for name, needs in choices.unavailable) + ".")
    return "\n\n".join(lines)


def page_updates(backend: Backend, request: GenerateRequest, progress):
    """The page's updates for one comparison: a cleared page, a preview per finished block, then
    the videos, figures, timeline, replay and downloads."""
    num_blocks = request.blocks
    tiles = {name: {} for name in RUNS}
    counts = {name: [] for name in RUNS}
    shape = None
    keep = gr.skip()
    yield ("", "Running…", None, None, None, None, "", "", "", None, None, None, None)
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
            # the service runs serial first (its first half of the progress), then the cascade
            progress(fraction, desc=f"{RUN_LABELS['serial' if fraction <= 0.5 else 'cascade']}: {message}")
        if batch[-1][0] == "done":
            result = batch[-1][1]
            break
        if any(event[0] == "block" for event in batch):
            strips = [block_strip(tiles[name], num_blocks, shape) if tiles[name] else keep for name in RUNS]
            yield (keep, keep, keep, keep, *strips, keep, keep, keep, keep, keep, keep, keep)
    stats = result.stats
    words = result.serial.unknown_words
    if words:
        # toasts render (sanitized) HTML: escaped, a word reads as typed
        gr.Warning("The model does not know: " + ", ".join(html.escape(w) for w in dict.fromkeys(words)))
    yield (unknown_note(words), speedup_markdown(stats), str(result.files["serial.mp4"]),
           str(result.files["cascade.mp4"]), *(block_strip(tiles[name], num_blocks, shape) for name in RUNS),
           run_table(stats["serial"]), run_table(stats["cascade"]), quality_markdown(stats), timeline_figure(stats),
           replay_data(result, counts), [str(result.files["side_by_side.mp4"]), str(result.files["stats.json"])],
           stats)


def api_function(shared: Backend):
    """The ``compare`` endpoint: a prompt and, optionally, every setting the page has (with the
    page's defaults); returns the serial, cascade and side-by-side videos and every figure."""
    d, choices = shared.choices.defaults, shared.choices

    def compare(prompt: str, preset: str = d.model, blocks: int = d.blocks, steps: int = d.steps,
                backend: str = "pool" if d.executor == "distributed" else "batched", workers: int = d.workers,
                window: int | None = None, stride: int | None = None, variant: str | None = None,
                recache: bool | None = None, bwcache: bool = d.bwcache, bwcache_threshold: float = d.bwcache_threshold,
                seed: int = d.seed, prompt_schedule: str = "") -> tuple[gr.FileData, gr.FileData, gr.FileData, dict]:
        """Run the prompt (or the prompt schedule, one ``block: prompt`` per line, which replaces
        it) serially and with Block Cascading on the shared backend (window, stride, variant and
        recache left unset are planned for the backend and steps); returns serial.mp4,
        cascade.mp4, side_by_side.mp4 and the stats (speedup, ideal speedup, quality, both runs'
        figures, timelines and prompt switches)."""
        try:
            request = make_request(choices, prompt, preset, blocks, steps, backend, workers, window, stride,
                                   variant, recache, bwcache, bwcache_threshold, seed, prompt_schedule)
            shared.wait_until_ready()
            result = shared.service.compare(request)
        except Exception as error:  # noqa: BLE001 - every failure reaches the visitor as one line
            raise user_error(error) from None
        files = result.files
        return (gr.FileData(path=str(files["serial.mp4"])), gr.FileData(path=str(files["cascade.mp4"])),
                gr.FileData(path=str(files["side_by_side.mp4"])), result.stats)

    return compare


def launch_options(service: Service) -> dict:
    """What ``launch`` needs besides where to listen: the service's files may be served."""
    return {"allowed_paths": [str(service.output_root)], "css": CSS, "theme": gr.themes.Soft()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the comparison page.")
    parser.add_argument("--warm-up", choices=("before", "background"), default=WARM_UP,
                        help="warm the backend up before serving the page, or while Gradio starts")
    args = parser.parse_args(argv)
    with Service(ttl_s=OUTPUT_TTL_S) as service:
        build_demo(service, warm_up_in_background=args.warm_up == "background").launch(**launch_options(service))


if __name__ == "__main__":  # the pool's worker processes import this file too: start nothing there
    main()
