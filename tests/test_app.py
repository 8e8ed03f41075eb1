"""The app (app.py): its settings and messages, the ``compare`` API through gradio_client against
the launched page, and a real browser (Playwright driving Debian's Chromium) on the same page.

The launched app is the real one: ``build_demo`` with the machine's default settings (on this CPU
box a pool with one worker per core), warmed up as ``python app.py`` does; API calls pass small
settings to stay quick. Expected values are the README's. The browser test saves its screenshot
under pytest's tmp folder, and into the repository when asked:

    CASCADE_SCREENSHOT=docs/screenshot.png python -m pytest tests/test_app.py -k browser
"""

import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import imageio_ffmpeg
import pytest

import app
from cascade.schedule import make_schedule
from cascade.service import MAX_PROMPT_CHARS, GenerateRequest, Limits, Offer, Service
from cascade.toy.data import COLOURS, MOTIONS, SHAPES, parse_prompt, training_vocabulary, words
from demo_support import DEFAULTS, free_port

SMALL = dict(blocks=3)  # API calls: short videos on the page's default backend
BROWSER_PROMPT = "a shiny red ball rolling to the right"  # "shiny" and "rolling" are unknown words
README = Path(__file__).parent.parent / "README.md"
CORES = len(os.sched_getaffinity(0))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app with this machine's defaults, launched on a free port: (demo, url, service)."""
    with Service(output_root=tmp_path_factory.mktemp("app-outputs"), ttl_s=3600) as service:
        backend = app.page_backend(service)
        demo = app.build_demo(backend)
        if app.WARM_UP == "before":
            backend.wait_until_ready()
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


def offer(**changes) -> Offer:
    """What a page offers without a Service: the default request of a two-core CPU box."""
    defaults = GenerateRequest(prompt="a red circle moving right", mode="cascade", model="tiny-shapes", blocks=8,
                               steps=4, window=4, stride=2, recache=True, joint=False, executor="distributed",
                               workers=2, threads=1)
    return Offer(**{"defaults": defaults, "runnable": ("tiny-shapes", "random-tiny"),
                    "unavailable": (("self-forcing-1.3b", "a CUDA GPU and the Wan2.1 checkpoints"),),
                    "max_workers": 2, "max_blocks": 16, "max_steps": 32, **changes})


def page_values(**changes) -> list:
    """The page's inputs after the prompt, in Offer.request's order."""
    values = dict(preset="tiny-shapes", blocks=8, steps=4, backend="pool", workers=2, window=4, stride=2,
                  variant="causal", recache=True, bwcache=False, threshold=0.15, seed=0)
    values.update(changes)
    return list(values.values())


def component(demo: gr.Blocks, elem_id: str):
    return next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == elem_id)


# --- settings and messages ----------------------------------------------------------------------


def test_page_settings_make_the_request_they_show():
    request = offer().request("a red circle", *page_values(backend="batched", variant="joint", bwcache=True,
                                                           threshold=0.3, seed=7.0))
    assert (request.executor, request.joint, request.bwcache, request.bwcache_threshold, request.seed) == \
        ("batched", True, True, 0.3, 7)
    assert (request.blocks, request.steps, request.window, request.stride, request.threads) == (8, 4, 4, 2, None)
    pooled = offer().request("a red circle", *page_values())
    assert (pooled.executor, pooled.workers, pooled.joint, pooled.threads) == ("distributed", 2, False, 1)
    joint = offer().request("a red circle", *page_values(variant="joint"))  # the service plans its placement: tokens
    assert (joint.executor, joint.joint, joint.placement) == ("distributed", True, None)


def test_planned_settings_are_left_to_the_service_and_planned_from_the_requests_own_steps(served):
    """With the plan box ticked (the default) the page sends no window, stride, variant or recache;
    the service plans them for the request's steps: at 16 steps on 2 one-core workers W2 s3, the
    model table's fastest within 2 points of serial (not the page's 4-step stride)."""
    unset = dict(window=None, stride=None, variant=None, recache=None)
    request = offer().request("a red circle", *page_values(steps=16, **unset))
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
    ("a red circle", {"preset": "self-forcing-1.3b"}, "cannot run here: it needs a CUDA GPU"),
    ("a red circle", {"preset": "nope"}, "unknown preset 'nope'; choose one of tiny-shapes, random-tiny"),
    ("a red circle", {"threshold": -0.1}, "the BWCache threshold must be a number from 0 to 1.0, got -0.1"),
    ("a red circle", {"threshold": math.nan}, "the BWCache threshold must be a number from 0 to 1.0, got nan"),
    ("a red circle", {"backend": "cluster"}, "backend must be one of pool, batched"),
])
def test_bad_settings_get_one_clear_line(prompt, changes, message):
    with pytest.raises(ValueError) as raised:
        offer().request(prompt, *page_values(**changes))
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_stride_beyond_the_items_per_block_is_refused_once_the_model_is_known(served):
    request = offer().request("a red circle", *page_values(stride=6))
    with pytest.raises(ValueError, match=re.escape("stride must be at most the items per block "
                                                   "(4 steps + recache = 5), got 6") + "$"):
        served[2].resolve(request)


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


# --- what the README promises of the page -------------------------------------------------------------


def slider_ends(demo: gr.Blocks) -> dict:
    return {name: component(demo, name).maximum for name in ("blocks", "steps", "window", "stride")}


def test_sliders_end_at_the_services_bounds(served, tmp_path):
    """README: at most 16 blocks and 32 steps, the Service's; the page's sliders end there (a
    stride may reach the steps + recache), and follow another Service's bounds."""
    assert slider_ends(served[0]) == {"blocks": 16, "steps": 32, "window": 16, "stride": 33}
    with Service(output_root=tmp_path, device="cpu", limits=Limits(blocks=3, steps=2)) as bounded:
        demo = app.build_demo(app.page_backend(bounded, defaults=DEFAULTS, background=False))
    assert slider_ends(demo) == {"blocks": 3, "steps": 2, "window": 3, "stride": 3}


@pytest.mark.parametrize("changes, message", [
    (dict(blocks=17), "blocks must be between 1 and 16, got 17"),  # the README's example
    (dict(steps=33), "steps must be between 1 and 32, got 33"),
])
def test_the_page_refuses_beyond_the_bounds_with_one_line(served, changes, message):
    """The page's own handler (Compare and Enter), as the browser calls it, with the plan box ticked."""
    run_page = next(fn.fn for fn in served[0].fns.values() if fn.name == "run_page")
    with pytest.raises(gr.Error) as raised:
        next(run_page("a red circle", "", True, *page_values(**changes), False))
    assert raised.value.message == message


def test_queue_holds_16_and_gradios_copies_go_after_an_hour(served):
    """README: at most ``QUEUE_SIZE`` = 16 wait; output folders, and Gradio's copies of their
    files, are deleted after an hour (Gradio sweeps every ``CACHE_SWEEP_S`` for files that old)."""
    demo = served[0]
    assert app.QUEUE_SIZE == 16 and demo._queue.max_size == 16
    assert app.OUTPUT_TTL_S == 3600 and demo.delete_cache == (app.CACHE_SWEEP_S, 3600)


def test_python_app_py_keeps_files_an_hour_and_warms_up_before_serving(monkeypatch):
    """``main`` as ``python app.py [--warm-up ...]`` runs it, up to the page's launch: the fork
    server first, then the Service's warm-up, then the page built while it runs; "before" (the
    default) waits for the warm-up before serving, "background" does not."""
    events, roots = [], []

    class Backend:
        def __init__(self, service):
            events.append(("warm-up", service.ttl_s))
            roots.append(str(service.output_root))

        def wait_until_ready(self):
            events.append("wait")

    class Page:
        def launch(self, **options):
            events.append(("launch", options["allowed_paths"] == [roots[-1]]))

    def build_demo(backend):
        events.append("page")
        return Page()

    monkeypatch.setattr(app, "start_fork_server", lambda: events.append("fork server"))
    monkeypatch.setattr(app, "page_backend", Backend)
    monkeypatch.setattr(app, "build_demo", build_demo)
    app.main([])
    assert events == ["fork server", ("warm-up", 3600), "page", "wait", ("launch", True)]
    events.clear()
    app.main(["--warm-up", "background"])
    assert events == ["fork server", ("warm-up", 3600), "page", ("launch", True)]


def test_app_py_imports_only_the_standard_library_and_the_fork_server():
    """Every pool worker runs app.py again as ``__mp_main__``: importing it must not import Gradio,
    torch or the Service (some 15 s of a core per worker on a 2-core box)."""
    script = ("import sys; import app; "
              "print(sorted(m for m in ('gradio', 'torch', 'cascade.service', 'diffusers') if m in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", script], cwd=README.parent, capture_output=True, text=True,
                           check=True)
    assert shown.stdout.strip() == "[]"


# --- the launched app through gradio_client ----------------------------------------------------


def assert_playable_mp4(path: str, frames: int) -> None:
    reader = imageio_ffmpeg.read_frames(path)
    meta = next(reader)
    decoded = sum(1 for _ in reader)
    assert meta["codec"].startswith("h264") and meta["duration"] > 0
    assert decoded == frames


def assert_honest_figures(stats: dict) -> None:
    """README: the speedup is measured, serial's latency over the cascade's; the ideal is the
    bound of the plan that ran, on a pool serial's forwards over the sum across ticks of the most
    items one worker has (block b on worker b mod W), here rebuilt from the plan's knobs."""
    serial, cascade, plan = stats["serial"], stats["cascade"], stats["plan"]
    assert stats["speedup"] == serial["latency_s"] / cascade["latency_s"]
    schedule = make_schedule(cascade["blocks"], cascade["steps"], window=plan["window"], stride=plan["stride"],
                             recache=plan["recache"])
    assert schedule.num_ticks == cascade["ticks"]
    busiest = sum(max(Counter(item.block % cascade["workers"] for item in tick).values()) for tick in schedule.ticks)
    assert stats["ideal_speedup"] == len(serial["timeline"]) / busiest
    assert stats["tick_ratio"] == serial["ticks"] / cascade["ticks"]


def test_compare_api_returns_two_playable_videos_and_honest_stats(served, client):
    if CORES < 2:
        pytest.skip("the page's default is a pool (README) only with two cores or more")
    serial, cascade, side_by_side, stats = client.predict(BROWSER_PROMPT, seed=3, api_name="/compare", **SMALL)
    assert_playable_mp4(serial, stats["serial"]["frames"])
    assert_playable_mp4(cascade, stats["cascade"]["frames"])
    assert_playable_mp4(side_by_side, stats["serial"]["frames"])
    # README: by default a pool with one worker per CPU core, one thread each
    assert (stats["cascade"]["executor"], stats["cascade"]["workers"], stats["cascade"]["threads"]) == \
        ("distributed", CORES, 1)
    assert_honest_figures(stats)
    assert stats["serial"]["blocks"] == 3 and stats["serial"]["seed"] == 3
    assert set(stats["cascade"]["unknown_words"]) == {"shiny", "rolling"}
    assert set(stats["quality"]["analyzer"]["serial"]) >= {"colour", "shape", "motion"}


def test_the_api_adds_the_sequence_run_on_the_pool_and_refuses_other_runs(served, client):
    """``runs="serial,cascade,sequence"``: the third run's figures in the stats and its column in
    the side-by-side video (three 64-px videos, each shown 4x)."""
    if CORES < 2:
        pytest.skip("the sequence run needs the page's default pool")
    serial, _, side_by_side, stats = client.predict("a red circle moving right", api_name="/compare",
                                                    runs="serial,cascade,sequence", blocks=2)
    sequence = stats["sequence"]
    assert (sequence["placement"], sequence["workers"], sequence["mode"]) == ("tokens", CORES, "serial")
    assert stats["sequence_speedup"] == stats["serial"]["latency_s"] / sequence["latency_s"]
    assert stats["sequence_plan"]["bound"] == CORES  # the serial schedule's forwards shared by the workers
    latency, communication = stats["serial"]["latency_s"], stats["sequence_plan"]["mean_communication_s"]
    assert stats["sequence_plan"]["bound_with_communication"] == latency / (latency / CORES + communication) < CORES
    assert next(imageio_ffmpeg.read_frames(side_by_side))["size"][0] >= 3 * next(imageio_ffmpeg.read_frames(serial))["size"][0]
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="runs must be serial,cascade or serial,cascade,sequence"):
        client.predict("a red circle", api_name="/compare", runs="serial", blocks=2)


def test_the_pages_sequence_box_shows_a_third_column_with_its_video_and_figures(served):
    """The page's own handler with the sequence box ticked: the third column shows from the first
    update, and the last one fills its video, preview strip and figures, and the speedup line."""
    if CORES < 2:
        pytest.skip("the sequence run needs the page's default pool")
    from cascade.ui.updates import OUTPUTS

    run_page = next(fn.fn for fn in served[0].fns.values() if fn.name == "run_page")
    updates = [dict(zip(OUTPUTS, update)) for update in run_page("a red circle", "", True, *page_values(blocks=2), True)]
    assert updates[0]["sequence_column"].visible is True
    last = updates[-1]
    assert last["sequence_video"].endswith("sequence.mp4") and "latency" in last["sequence_stats"]
    assert "Sequence parallel:" in last["speedup"] and last["sequence_live"] is not None
    assert "spent exchanging tokens" in last["speedup"].split("Sequence parallel:", 1)[1]
    plain = [dict(zip(OUTPUTS, update)) for update in run_page("a red circle", "", True, *page_values(blocks=2), False)]
    assert plain[0]["sequence_column"].visible is False and "Sequence parallel" not in plain[-1]["speedup"]


def test_readme_api_example_prints_the_comparisons_figures(served, capsys):
    if CORES < 2:
        pytest.skip("the page's default is a pool (README) only with two cores or more")
    example = README.read_text().split("## The app", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    names = {}
    exec(example.replace("http://127.0.0.1:7860/", served[1]), names)
    stats = names["stats"]
    printed = capsys.readouterr().out.strip().splitlines()[-1]  # after gradio_client's "Loaded as API"
    assert printed == f"{stats['speedup']} {stats['ideal_speedup']} {stats['quality']}"
    assert (stats["serial"]["prompt"], stats["serial"]["blocks"], stats["cascade"]["blocks"]) == \
        ("a red circle moving right", 4, 4)
    assert_honest_figures(stats)
    assert set(stats["quality"]) >= {"psnr_db", "ssim", "analyzer"}
    for video in ("serial_mp4", "cascade_mp4", "side_by_side_mp4"):
        assert_playable_mp4(names[video], stats["serial"]["frames"])


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
    body = '{"data": ["a red circle", "tiny-shapes", 3, 4, "pool", 2, 4, 2, "causal", true, true, NaN, 0, "", "serial,cascade"]}'
    event = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30).json()
    with httpx.stream("GET", f"{url}/{event['event_id']}", timeout=60) as reply:
        text = "".join(reply.iter_text())
    assert "event: error" in text and "the BWCache threshold must be a number from 0 to 1.0, got nan" in text


@pytest.fixture
def held(served, monkeypatch):
    """The served Service's comparisons held at their start until ``release`` is set; ``runs``
    records each one's start and end (by seed), in order."""
    service = served[2]
    gate = SimpleNamespace(release=threading.Event(), started=threading.Event(), runs=[])
    compare = service.compare

    def held_compare(request, *args, **kwargs):
        gate.runs.append(("start", request.seed))
        gate.started.set()
        gate.release.wait(120)
        try:
            return compare(request, *args, **kwargs)
        finally:
            gate.runs.append(("end", request.seed))

    monkeypatch.setattr(service, "compare", held_compare)
    try:
        yield gate
    finally:
        gate.release.set()


def wait_for(condition, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_comparisons_take_turns_in_gradio_queue(served, client, held):
    """Two comparisons at once: the second waits in Gradio's queue, first in line, while the first
    runs (its visitor is told), and starts only once the first has ended: no two runs share the
    backend. The page's Compare (button or Enter) and the API are one concurrency group of one."""
    from gradio_client.utils import Status

    first = client.submit("a green ball falling", seed=1, api_name="/compare", blocks=2)
    assert held.started.wait(60)
    second = client.submit("a green ball falling", seed=2, api_name="/compare", blocks=2)
    assert wait_for(lambda: second.status().code == Status.IN_QUEUE)
    assert second.status().rank == 0 and held.runs == [("start", 1)]
    held.release.set()
    assert [job.result(timeout=120)[3]["cascade"]["seed"] for job in (first, second)] == [1, 2]
    assert held.runs == [("start", 1), ("end", 1), ("start", 2), ("end", 2)]
    queued = [fn for fn in served[0].fns.values() if fn.queue]
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
    colours = page.evaluate("""() => [...document.querySelectorAll('#race figure:not([hidden]) canvas')].map(canvas => {
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


def test_browser_shows_a_waiting_visitor_the_queue_position(served, browser, held):
    """README: comparisons take turns, and the page shows the queue position (on the speedup line)."""
    running, waiting = browser.new_page(), browser.new_page()
    for page in (running, waiting):
        page.goto(served[1])
    running.click("#compare")
    assert held.started.wait(60)
    waiting.click("#compare")
    waiting.wait_for_function("() => document.querySelector('#speedup').innerText.includes('queue:')",
                              timeout=30_000)
    assert "queue: 1/1" in waiting.inner_text("#speedup") and len(held.runs) == 1
    held.release.set()
    for page in (running, waiting):
        page.wait_for_function(VIDEOS_LOADED, timeout=90_000)
        page.close()
    assert [event for event, _ in held.runs] == ["start", "end", "start", "end"]


def test_browser_bad_input_gets_a_clear_message(served, browser):
    page = browser.new_page()
    page.goto(served[1])
    page.fill("#prompt textarea", "")
    page.click("#compare")
    page.wait_for_selector(TOAST, timeout=30_000)
    assert "the prompt is empty" in page.inner_text(TOAST)
    page.close()


def _wake_ups_of_this_process() -> int:
    """Voluntary context switches of every thread so far (each is a sleep or wait that ended)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


def test_gradios_queue_leaves_the_cores_to_the_runs(served):
    """cascade/ui/quiet_queue.py: Gradio's queue polls for jobs every 10 ms and for progress every
    50 ms instead of every 1 and 10 ms, so an idle page wakes this process about 120 times a
    second, not about 800 (on a 2-core box each wake-up preempts a pool worker)."""
    from cascade.ui import quiet_queue

    queue = served[0]._queue
    assert (queue.sleep_when_free, queue.progress_update_sleep_when_free) == (0.01, 0.05)
    before = _wake_ups_of_this_process()
    time.sleep(1.0)
    assert _wake_ups_of_this_process() - before < 300  # measured 116-121 at these intervals; with Gradio's own, 766-894
    with pytest.raises(RuntimeError, match="Gradio's queue has no sleep_when_free interval to set"):
        quiet_queue.quiet_queue(SimpleNamespace(_queue=SimpleNamespace()))
