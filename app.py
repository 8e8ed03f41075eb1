"""The comparison app (a Hugging Face Space): one prompt, run serially and with Block Cascading.

``python app.py`` serves the page. It lays out and wires only: every run goes through one
``cascade.service.Service``, created when the app starts, warmed up, and shared by every visitor;
what the page shows is drawn by ``cascade.ui``. Gradio's queue runs one comparison at a time (one
``concurrency_id``, limit 1), so two runs never share the backend and the timings stay honest; at
most ``QUEUE_SIZE`` wait behind it, and the next visitor is told the queue is full. What a request
may ask (blocks, steps, which models) is the Service's to say and check (``Service.offer``,
``Offer.request``); the page offers it and shows its one-line errors. ``build_demo(page_backend(service))``
builds the page for any such Service, so tests and benchmarks launch it with a small one. Ctrl-C
closes the Service on the way out: a run in progress fails, and no worker or shared memory is left.

Every pool worker runs this file again (multiprocessing's fork server imports the main module),
so its top imports only the standard library; torch, the model code and Gradio are imported by the
functions that need them, and ``main`` orders them so the start-up uses both cores: the pool's
fork server first (it imports the workers' modules on its own core), then the Service and its
warm-up on a thread, then Gradio and the page while the warm-up runs.
"""

import argparse
import json
from pathlib import Path

from cascade.backend.fork_server import start_fork_server

EXAMPLES_FILE = Path(__file__).parent / "examples" / "prompts.json"
BACKEND = "backend"  # the one concurrency group every comparison queues in
OUTPUT_TTL_S = 3600  # a request's folder (and Gradio's copies of its files) lives an hour
CACHE_SWEEP_S = 600
# Visitors who may wait behind the one running (Gradio's queue); the next is told the queue is full.
# At the defaults a 2-core CPU box serves about 24 comparisons a minute (benchmarks/bench_load.py),
# so the last in line waits under a minute.
QUEUE_SIZE = 16
# The warm-up always overlaps Gradio's import and the page's build; "before" serves the page once it
# is done. Serving while it runs made the first comparison 4.7x slower than later ones on a 2-core
# box (the two compete for the cores).
WARM_UP = "before"
PLANNED_SETTINGS = slice(5, 9)  # window, stride, variant, recache among Offer.request's settings after the prompt
SEQUENCE_TITLE = "Sequence parallel (the serial schedule, each forward's tokens split over the pool's workers)"

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


def load_examples(path: Path = EXAMPLES_FILE, kind: str = "prompts") -> list[str]:
    """The example prompts, or with ``kind="prompt_schedules"`` the example prompt schedules
    (the README and the tests read the same file)."""
    return json.loads(Path(path).read_text())[kind]


def page_backend(service, defaults=None, background: bool = True):
    """The page's ``cascade.ui.warm_up.Backend`` for ``service``, warming up on a thread from now on
    (``background=False``: warmed up when it returns). ``defaults``: the page's default
    ``GenerateRequest`` (default: the service's best for this machine)."""
    from cascade.ui.warm_up import Backend

    return Backend(service, service.offer(defaults or service.default_request(load_examples()[0])), background)


def build_demo(backend, queue_size: int = QUEUE_SIZE) -> "gr.Blocks":
    """The page and the ``compare`` API on ``backend`` (see ``page_backend``). ``queue_size``:
    comparisons that may wait at once (page and API together) before the next is refused with
    "Queue is full". Every comparison waits for the backend's warm-up."""
    import gradio as gr

    from cascade.service import COMPARE_RUNS, DEFAULT_RUNS, MAX_PROMPT_CHARS, RUN_LABELS
    from cascade.ui.errors import user_error
    from cascade.ui.quiet_queue import quiet_queue
    from cascade.ui.replay import race_replay
    from cascade.ui.updates import OUTPUTS, page_updates

    offer = backend.offer
    with gr.Blocks(title="Block Cascading vs serial", delete_cache=(CACHE_SWEEP_S, OUTPUT_TTL_S)) as demo:
        gr.Markdown(HEADER)
        with gr.Row(equal_height=True):
            prompt = gr.Textbox(label="Prompt", value=offer.defaults.prompt, max_length=MAX_PROMPT_CHARS, scale=5,
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
        settings = settings_panel(backend.service.device, offer)
        shown = {"note": gr.HTML(elem_id="note"),
                 "speedup": gr.Markdown("Press **Compare** to run both pipelines.", elem_id="speedup")}
        with gr.Row(equal_height=False):
            for name, label in {**RUN_LABELS, "sequence": SEQUENCE_TITLE}.items():
                # the third column shows only when a comparison made the sequence run
                with gr.Column(visible=name in RUN_LABELS, elem_id=f"{name}-column") as column:
                    gr.Markdown(f"### {label}")
                    shown[f"{name}_video"] = gr.Video(label=label, elem_id=f"{name}-video", autoplay=True, loop=True,
                                                      interactive=False, height=300)
                    shown[f"{name}_live"] = gr.Image(label="Blocks as they finished", elem_id=f"{name}-live",
                                                     format="png", interactive=False, height=96, buttons=[])
                    shown[f"{name}_stats"] = gr.Markdown(elem_id=f"{name}-stats")
                shown[f"{name}_column"] = column
        shown["quality"] = gr.Markdown(elem_id="quality")
        shown["timeline"] = gr.Plot(label="Timeline: who ran what, when (each bar a forward, labelled with its step; "
                                          "R = recache, S = re-encoding for a new prompt; dashed: prompt switches)",
                                    elem_id="timeline")
        gr.Markdown("### Race replay\nBoth videos revealed block by block at the moments their frames were "
                    "ready, on one clock, slowed down so you can follow.")
        shown["race"] = race_replay()
        shown["downloads"] = gr.File(label="Downloads: side-by-side video and every figure (stats.json)",
                                     file_count="multiple", interactive=False, elem_id="downloads")
        with gr.Accordion("All figures", open=False):
            shown["figures"] = gr.JSON(elem_id="figures")

        def run_page(prompt_text, schedule_text, planned, *values, progress=gr.Progress()):
            """The page's comparison: previews as blocks finish, then every figure. ``planned``: the
            service plans window, stride, variant and recache for the chosen backend and steps; the
            last value: whether to add the sequence run."""
            try:
                *values, sequence = values
                if planned is True:
                    values[PLANNED_SETTINGS] = [None] * len(values[PLANNED_SETTINGS])
                request = offer.request(prompt_text, *values, prompt_schedule=schedule_text,
                                        runs=",".join(COMPARE_RUNS if sequence is True else DEFAULT_RUNS))
                progress(0, desc="Waiting for the backend to warm up")
                backend.wait_until_ready()
                yield from page_updates(backend, request, progress)
            except Exception as error:  # noqa: BLE001 - every failure reaches the visitor as one line
                raise user_error(error) from None

        # the progress bar and the queue position show on the speedup line, so the previews stay visible
        gr.on([compare_button.click, prompt.submit], run_page, inputs=[prompt, schedule, *settings],
              outputs=[shown[name] for name in OUTPUTS], api_visibility="private", concurrency_id=BACKEND,
              concurrency_limit=1, show_progress="full", show_progress_on=[shown["speedup"]])
        gr.api(api_function(backend), api_name="compare", concurrency_id=BACKEND, concurrency_limit=1)
    return quiet_queue(demo.queue(max_size=queue_size))


def settings_panel(device: str, offer) -> list:
    """The plan checkbox, then the settings in the order ``Offer.request`` takes them after the
    prompt, for an ``Offer`` on ``device``, then the sequence run's checkbox."""
    import gradio as gr

    from cascade.service import FORM_SEED_MAX, THRESHOLD_MAX, VARIANTS
    from cascade.ui.tables import presets_note

    d = offer.defaults
    pool_default = d.executor == "distributed"
    with gr.Accordion("Settings", open=False, elem_id="settings"):
        with gr.Row():
            preset = gr.Dropdown(list(offer.runnable), value=d.model, label="Model preset", elem_id="preset")
            blocks = gr.Slider(1, offer.max_blocks, value=d.blocks, step=1, label="Video length (blocks)",
                               elem_id="blocks")
            steps = gr.Slider(1, offer.max_steps, value=d.steps, step=1, label="Steps per block", elem_id="steps")
        with gr.Row():
            backend = gr.Radio([(f"worker pool (one worker per {'GPU' if device == 'cuda' else 'core'})",
                                 "pool"), ("one device, batched", "batched")],
                               value="pool" if pool_default else "batched", label="Backend", elem_id="backend")
            workers = gr.Slider(1, offer.max_workers, value=d.workers if pool_default else 2, step=1,
                                label="Workers in the pool", elem_id="workers",
                                info="another count starts another pool (a few seconds, once)")
        planned = gr.Checkbox(value=True, elem_id="planned", label="Plan window, stride, variant and recache for "
                              "this backend and these steps (the fastest measured plan within 2 points of serial)")
        with gr.Row():
            window = gr.Slider(1, offer.max_blocks, value=d.window, step=1, label="Window (blocks in flight)",
                               elem_id="window")
            stride = gr.Slider(1, offer.max_steps + 1, value=d.stride, step=1, elem_id="stride",
                               label="Stride (steps before the next block starts)")
            variant = gr.Radio(list(VARIANTS), value="joint" if d.joint else "causal", label="Variant",
                               info="joint: blocks in flight attend to each other in one forward (a pool splits its tokens)",
                               elem_id="variant")
            recache = gr.Checkbox(value=d.recache, label="Recache (a clean forward after each block)",
                                  elem_id="recache")
        with gr.Row():
            bwcache = gr.Checkbox(value=d.bwcache, label="BWCache (reuse block outputs between steps)",
                                  elem_id="bwcache")
            threshold = gr.Number(value=d.bwcache_threshold, minimum=0, maximum=THRESHOLD_MAX, step=0.05,
                                  label="BWCache threshold δ", elem_id="threshold")
            seed = gr.Number(value=d.seed, minimum=0, maximum=FORM_SEED_MAX, precision=0, label="Seed", elem_id="seed")
            randomize = gr.Button("Randomize seed", size="sm", elem_id="randomize")
        # client-side: a new seed needs no server round trip and never waits in the queue
        randomize.click(None, outputs=seed, js=f"() => Math.floor(Math.random() * {FORM_SEED_MAX})")
        sequence = gr.Checkbox(value=False, elem_id="sequence",
                               label="Add a third run: sequence parallelism on the same pool (the serial schedule, "
                                     "each forward's tokens split over the workers; worker pool only)")
        gr.Markdown(presets_note(offer))
    return [planned, preset, blocks, steps, backend, workers, window, stride, variant, recache, bwcache, threshold, seed,
            sequence]


def api_function(shared):
    """The ``compare`` endpoint on a ``Backend``: a prompt and, optionally, every setting the page
    has (with the page's defaults); returns the serial, cascade and side-by-side videos and every
    figure. (Gradio reads the endpoint's type hints, so they are evaluated: no postponed annotations here.)"""
    import gradio as gr

    from cascade.ui.errors import user_error

    offer = shared.offer
    d = offer.defaults

    def compare(prompt: str, preset: str = d.model, blocks: int = d.blocks, steps: int = d.steps,
                backend: str = "pool" if d.executor == "distributed" else "batched", workers: int = d.workers,
                window: int | None = None, stride: int | None = None, variant: str | None = None,
                recache: bool | None = None, bwcache: bool = d.bwcache, bwcache_threshold: float = d.bwcache_threshold,
                seed: int = d.seed, prompt_schedule: str = "",
                runs: str = "serial,cascade") -> tuple[gr.FileData, gr.FileData, gr.FileData, dict]:
        """Run the prompt (or the prompt schedule, one ``block: prompt`` per line, which replaces
        it) serially and with Block Cascading on the shared backend (window, stride, variant and
        recache left unset are planned for the backend and steps); returns serial.mp4,
        cascade.mp4, side_by_side.mp4 and the stats (speedup, ideal speedup, quality, every run's
        figures, timelines and prompt switches). ``runs="serial,cascade,sequence"`` (a pool only)
        adds the sequence-parallel run: its figures in the stats (``sequence``,
        ``sequence_speedup``, ``sequence_plan``), its column in side_by_side.mp4."""
        try:
            request = offer.request(prompt, preset, blocks, steps, backend, workers, window, stride, variant,
                                    recache, bwcache, bwcache_threshold, seed, prompt_schedule, runs)
            shared.wait_until_ready()
            result = shared.service.compare(request)
        except Exception as error:  # noqa: BLE001 - every failure reaches the visitor as one line
            raise user_error(error) from None
        files = result.files
        return (gr.FileData(path=str(files["serial.mp4"])), gr.FileData(path=str(files["cascade.mp4"])),
                gr.FileData(path=str(files["side_by_side.mp4"])), result.stats)

    return compare


def launch_options(service) -> dict:
    """What ``launch`` needs besides where to listen: the Service's files may be served."""
    import gradio as gr

    return {"allowed_paths": [str(service.output_root)], "css": CSS, "theme": gr.themes.Soft()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the comparison page.")
    parser.add_argument("--warm-up", choices=("before", "background"), default=WARM_UP,
                        help="warm the backend up before serving the page, or while Gradio starts")
    args = parser.parse_args(argv)
    start_fork_server()
    from cascade.service import Service

    with Service(ttl_s=OUTPUT_TTL_S) as service:
        backend = page_backend(service)
        demo = build_demo(backend)
        if args.warm_up == "before":
            backend.wait_until_ready()
        demo.launch(**launch_options(service))


if __name__ == "__main__":  # the pool's worker processes import this file too: start nothing there
    main()
