"""The app (app.py): its settings and messages, the ``compare`` API through gradio_client against
the launched page, and a real browser (Playwright driving Debian's Chromium) on the same page.

The launched app is the real one: ``build_demo`` with the machine's default settings (on this CPU
box a pool with one worker per core); API calls pass small settings to stay quick. The browser
test saves its screenshot under pytest's tmp folder, and into the repository when asked:

    CASCADE_SCREENSHOT=docs/screenshot.png python -m pytest tests/test_app.py -k browser
"""

import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import httpx
import imageio_ffmpeg
import pytest

import app
from cascade.service import MAX_PROMPT_CHARS, GenerateRequest, Service
from cascade.toy.data import COLOURS, MOTIONS, SHAPES, parse_prompt, training_vocabulary, words
from demo_support import free_port

SMALL = dict(blocks=3)  # API calls: short videos on the page's default backend
BROWSER_PROMPT = "a shiny red ball rolling to the right"  # "shiny" and "rolling" are unknown words


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app with this machine's defaults, launched on a free port: (demo, url, service)."""
    with Service(output_root=tmp_path_factory.mktemp("app-outputs"), ttl_s=3600) as service:
        demo = app.build_demo(service)
        demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                            quiet=True, **app.launch_options(service))
        try:
            yield demo, demo.local_url, service
        finally:
            demo.close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served[1], verbose=False)


def choices(**changes) -> app.Choices:
    """Page choices without a Service: the default request of a two-core CPU box."""
    defaults = GenerateRequest(prompt="a red circle moving right", mode="cascade", model="tiny-shapes", blocks=8,
                               steps=4, window=4, stride=2, recache=True, joint=False, executor="distributed",
                               workers=2, threads=1)
    return app.Choices(**{"defaults": defaults, "runnable": ("tiny-shapes", "random-tiny"),
                          "unavailable": (("self-forcing-1.3b", "a CUDA GPU and the Wan2.1 checkpoints"),),
                          "max_workers": 2, "max_blocks": 16, "max_steps": 32, **changes})


def page_values(**changes) -> list:
    """The page's inputs after the prompt, in make_request's order."""
    values = dict(preset="tiny-shapes", blocks=8, steps=4, backend="pool", workers=2, window=4, stride=2,
                  variant="causal", recache=True, bwcache=False, threshold=0.15, seed=0)
    values.update(changes)
    return list(values.values())


# --- settings and messages ----------------------------------------------------------------------


def test_page_settings_make_the_request_they_show():
    request = app.make_request(choices(), "a red circle", *page_values(backend="batched", variant="joint",
                                                                       bwcache=True, threshold=0.3, seed=7.0))
    assert (request.executor, request.joint, request.bwcache, request.bwcache_threshold, request.seed) == \
        ("batched", True, True, 0.3, 7)
    assert (request.blocks, request.steps, request.window, request.stride, request.threads) == (8, 4, 4, 2, None)
    pooled = app.make_request(choices(), "a red circle", *page_values())
    assert (pooled.executor, pooled.workers, pooled.joint, pooled.threads) == ("distributed", 2, False, 1)


def test_planned_settings_are_left_to_the_service_and_planned_from_the_requests_own_steps(served):
    """With the plan box ticked (the default) the page sends no window, stride, variant or recache;
    the service plans them for the request's steps: at 16 steps on 2 one-core workers W2 s3, the
    model table's fastest within 2 points of serial (not the page's 4-step stride)."""
    unset = dict(window=None, stride=None, variant=None, recache=None)
    request = app.make_request(choices(), "a red circle", *page_values(steps=16, **unset))
    assert (request.window, request.stride, request.joint, request.recache) == (None, None, None, None)
    service = served[2]
    planned = service.resolve(replace(request, workers=2, threads=1))
    assert (planned.window, planned.stride, planned.recache, planned.joint) == (2, 3, True, False)
    assert app.PLANNED_SETTINGS == slice(5, 9) and list(page_values())[app.PLANNED_SETTINGS] == [4, 2, "causal", True]


@pytest.mark.parametrize("prompt, changes, message", [
    ("", {}, "the prompt is empty"),
    ("   ", {}, "the prompt is empty"),
    ("x" * (MAX_PROMPT_CHARS + 1), {}, f"the limit is {MAX_PROMPT_CHARS}"),
    ("a red circle", {"blocks": 0}, "blocks must be between 1 and 16, got 0"),
    ("a red circle", {"blocks": 99}, "blocks must be between 1 and 16, got 99"),
    ("a red circle", {"steps": 2.5}, "steps must be a whole number, got 2.5"),
    ("a red circle", {"workers": 3}, "workers must be between 1 and 2, got 3"),
    ("a red circle", {"stride": 6}, "stride must be at most the items per block (4 steps + recache), got 6"),
    ("a red circle", {"preset": "self-forcing-1.3b"}, "cannot run here: it needs a CUDA GPU"),
    ("a red circle", {"preset": "nope"}, "unknown preset 'nope'; choose one of tiny-shapes, random-tiny"),
    ("a red circle", {"threshold": -0.1}, "the BWCache threshold must be a number from 0 to 1.0, got -0.1"),
    ("a red circle", {"threshold": math.nan}, "the BWCache threshold must be a number from 0 to 1.0, got nan"),
    ("a red circle", {"backend": "cluster"}, "backend must be one of pool, batched"),
    ("a red circle", {"variant": "joint"}, "the joint variant runs a tick as one forward on one device"),
])
def test_bad_settings_get_one_clear_line(prompt, changes, message):
    with pytest.raises(ValueError) as raised:
        app.make_request(choices(), prompt, *page_values(**changes))
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_examples_show_the_whole_bundled_world():
    prompts = app.load_examples()
    targets = [parse_prompt(p) for p in prompts]
    assert {t.colour for t in targets} >= set(COLOURS)
    assert {t.shape for t in targets} >= set(SHAPES)
    assert {t.motion for t in targets} >= set(MOTIONS)
    vocabulary = set(training_vocabulary())
    unknown = [p for p in prompts if set(words(p)) - vocabulary]
    assert 2 <= len(unknown) < len(prompts) / 2
    assert len({p.split()[0] for p in prompts}) >= 4  # several phrasings, not one template
    assert len(set(prompts)) == len(prompts)


def test_timeline_gives_a_row_per_worker_and_a_lane_per_batched_item():
    def run(entries):
        return {"timeline": [dict(zip(("block", "step", "worker", "start", "end"), e)) for e in entries], "switches": []}

    stats = {"serial": run([(0, 0, 0, 0.0, 0.1), (0, "recache", 0, 0.1, 0.2), (1, 0, 0, 0.2, 0.3)]),
             "cascade": run([(0, 0, 0, 0.0, 0.1), (1, 0, 1, 0.05, 0.15), (2, 0, 1, 0.05, 0.15)])}
    figure = app.timeline_figure(stats)
    rows = list(figure.layout.yaxis.categoryarray)
    assert rows == ["Serial (block-causal) · worker 0", "Block Cascading · worker 0",
                    "Block Cascading · worker 1", "Block Cascading · worker 1 (2)"]
    by_block = {trace.name: trace for trace in figure.data}
    assert list(by_block["block 0"].text) == ["0", "R", "0"]
    assert list(by_block["block 0"].base) == [0.0, 0.1, 0.0]
    assert list(by_block["block 2"].y) == ["Block Cascading · worker 1 (2)"]


def test_presets_that_cannot_run_here_are_listed_with_what_they_need():
    note = app.presets_note(choices())
    assert "**self-forcing-1.3b** (needs a CUDA GPU and the Wan2.1 checkpoints)" in note
    assert "a worker pool of 2 workers, 1 thread each, 8 blocks × 4 steps" in note


def test_user_text_is_shown_escaped():
    assert "&lt;script&gt;" in app.unknown_note(["<script>"])
    assert app.unknown_note([]) == ""
    assert app.escape_markdown("<b>*x*</b>") == "&lt;b&gt;\\*x\\*&lt;/b&gt;"


# --- the launched app through gradio_client ----------------------------------------------------


def assert_playable_mp4(path: str, frames: int) -> None:
    reader = imageio_ffmpeg.read_frames(path)
    meta = next(reader)
    decoded = sum(1 for _ in reader)
    assert meta["codec"].startswith("h264") and meta["duration"] > 0
    assert decoded == frames


def test_compare_api_returns_two_playable_videos_and_honest_stats(served, client):
    serial, cascade, side_by_side, stats = client.predict(BROWSER_PROMPT, seed=3, api_name="/compare", **SMALL)
    assert_playable_mp4(serial, stats["serial"]["frames"])
    assert_playable_mp4(cascade, stats["cascade"]["frames"])
    assert_playable_mp4(side_by_side, stats["serial"]["frames"])
    assert stats["speedup"] == pytest.approx(stats["serial"]["latency_s"] / stats["cascade"]["latency_s"])
    assert stats["ideal_speedup"] == pytest.approx(stats["plan"]["bound"])
    assert stats["tick_ratio"] == pytest.approx(stats["serial"]["ticks"] / stats["cascade"]["ticks"])
    assert stats["serial"]["blocks"] == 3 and stats["serial"]["seed"] == 3
    assert stats["cascade"]["executor"] == served[2].default_request().executor  # the page's default backend
    assert set(stats["cascade"]["unknown_words"]) == {"shiny", "rolling"}
    assert set(stats["quality"]["analyzer"]["serial"]) >= {"colour", "shape", "motion"}


def test_readme_api_example_runs(served, capsys):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    example = readme.split("## The app", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(example.strip().splitlines()) == 3
    exec(example.replace("http://127.0.0.1:7860/", served[1]), {})
    speedup, ideal = capsys.readouterr().out.strip().splitlines()[-1].split()[:2]  # after "Loaded as API"
    assert float(speedup) > 0 and float(ideal) >= 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), "the prompt is empty"),
    (dict(prompt="x" * (MAX_PROMPT_CHARS + 1)), "the limit is"),
    (dict(prompt="a red circle", blocks=0), "blocks must be between 1 and 16, got 0"),
    (dict(prompt="a red circle", preset="no-such-model"), "unknown preset 'no-such-model'"),
    (dict(prompt="a red circle", bwcache_threshold=-1.0), "the BWCache threshold must be a number from 0"),
])
def test_compare_api_reports_bad_input(client, kwargs, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as raised:
        client.predict(api_name="/compare", **kwargs)
    assert message in str(raised.value)


def test_compare_api_reports_a_nan_threshold(served):
    """JSON clients that send NaN (gradio_client refuses to) get the same clear line."""
    url = served[1].rstrip("/") + "/gradio_api/call/compare"
    body = '{"data": ["a red circle", "tiny-shapes", 3, 4, "pool", 2, 4, 2, "causal", true, true, NaN, 0, ""]}'
    event = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30).json()
    with httpx.stream("GET", f"{url}/{event['event_id']}", timeout=60) as reply:
        text = "".join(reply.iter_text())
    assert "event: error" in text and "the BWCache threshold must be a number from 0 to 1.0, got nan" in text


def test_comparisons_take_turns_in_gradio_queue(served, client):
    """Two comparisons at once: the second waits in Gradio's queue (shown to its visitor), not
    inside the service, so neither run shares the backend with the other."""
    jobs = [client.submit("a green ball falling", api_name="/compare", blocks=2) for _ in range(2)]
    waits = [job.result(timeout=120)[3]["queued_s"] for job in jobs]
    assert max(waits) < 0.05
    queued = [fn for fn in served[0].fns.values() if fn.queue]  # the page's Compare (button or Enter), the API
    assert len(queued) == 2 and {(fn.concurrency_id, fn.concurrency_limit) for fn in queued} == {(app.BACKEND, 1)}


# --- a real browser ------------------------------------------------------------------------------


VIDEOS_LOADED = """() => ['serial', 'cascade'].every(name => {
    const video = document.querySelector('#' + name + '-video video');
    return video && video.readyState >= 2 && video.duration > 0; })"""
TOAST = "[data-testid='toast-text']"


def test_browser_compare_shows_videos_figures_timeline_and_replays_the_race(served, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(served[1])
    page.fill("#prompt textarea", BROWSER_PROMPT)
    page.click("#compare")
    page.wait_for_function(VIDEOS_LOADED, timeout=90_000)
    page.wait_for_selector("#timeline .js-plotly-plot", timeout=30_000)
    speedup_text = page.inner_text("#speedup")
    assert "faster (at most" in speedup_text and "Why this plan:" in speedup_text and " ticks, at most " in speedup_text
    assert "latency" in page.inner_text("#serial-stats") and "cache reuse" in page.inner_text("#cascade-stats")
    assert "shiny" in page.inner_text("#note")
    assert page.locator("#timeline .js-plotly-plot .bars path").count() > 0  # one path per work item
    assert page.locator("#downloads").inner_text().count(".") >= 2  # side_by_side.mp4 and stats.json

    page.click("#race .race-play")
    page.wait_for_function("() => document.querySelector('#race [data-state]').dataset.state === 'done'",
                           timeout=30_000)
    colours = page.evaluate("""() => [...document.querySelectorAll('#race canvas')].map(canvas => {
        const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        const seen = new Set();
        for (let i = 0; i < pixels.length; i += 4 * 7) seen.add(pixels[i] << 16 | pixels[i + 1] << 8 | pixels[i + 2]);
        return seen.size; })""")
    assert len(colours) == 2 and min(colours) > 10  # both sides drew frames, not an empty canvas
    for close in page.locator(".toast-close").all():  # the unknown-words toast would cover the picture
        close.click()
    page.wait_for_selector(".toast-body", state="detached")
    page.screenshot(path=tmp_path / "screenshot.png", full_page=True)
    if os.environ.get("CASCADE_SCREENSHOT"):
        shutil.copyfile(tmp_path / "screenshot.png", os.environ["CASCADE_SCREENSHOT"])
    page.close()


def test_browser_bad_input_gets_a_clear_message(served, browser):
    page = browser.new_page()
    page.goto(served[1])
    page.fill("#prompt textarea", "")
    page.click("#compare")
    page.wait_for_selector(TOAST, timeout=30_000)
    assert "the prompt is empty" in page.inner_text(TOAST)
    page.close()
