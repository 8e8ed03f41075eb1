"""The one door: a ``Service`` owns the models, the worker pools and the output folders.

Whoever runs the package creates one (the app at start, the CLI per command, a library user in a
``with`` block) and every request goes through it::

    with Service() as service:
        result = service.compare(GenerateRequest(prompt="a red circle moving right"))
        result.stats["speedup"], result.files["side_by_side.mp4"]

Requests from several threads take turns in arrival order (one run at a time on this machine's
cores, so timings stay honest and no two runs share a model's hooks or a pool); the time a
request waited is reported as ``queued_s``, apart from the run's own latency. ``compare`` and
``generate`` return everything a caller shows: frames, stats, quality and the files they wrote
into a fresh folder under the output root. ``close()`` stops every pool.
"""

from __future__ import annotations

import json
import os
import re
import reprlib
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .backend import LocalExecutor
from .backend.rank import KV_EXCHANGES, PLACEMENTS, TICK_TIMEOUT_S
from .caching import BWCacheConfig
from .costs import ForwardCosts
from .model.placement import pool_workers
from .model.presets import (CascadeModel, PresetLoader, available_models, default_model_name, load_model,
                             preset_status)
from .pipeline import BlockCausalPipeline, PipelineOutput, ProgressFn, switch_recache_plan
from .plan import (BLOCKS_REFUSES_ONE_FORWARD, Plan, PlanBackend, assumptions, bound, bound_with_communication,
                   choose_plan, describe, tick_ratio)
from .schedule import PromptSchedule, WorkItem, check_prompt_schedule, make_schedule, parse_prompt_schedule
from .worlds import judge_of

MODES = ("serial", "cascade")
EXECUTORS = ("local", "batched", "distributed")
RUN_LABELS = {"serial": "Serial (block-causal)", "cascade": "Block Cascading"}
# compare's optional third run: the serial schedule on the pool's tokens placement
SEQUENCE_LABEL = "Sequence parallel (serial schedule, {workers} workers)"
COMPARE_RUNS = ("serial", "cascade", "sequence")
DEFAULT_RUNS = ("serial", "cascade")
MAX_PROMPT_CHARS = 2000
# What a request leaves unset and its model does not set (``CascadeModel.run_defaults``); the
# schedule's knobs (window, stride, recache, joint) are planned for the backend (``cascade.plan``).
FALLBACK_DEFAULTS = dict(mode="serial", blocks=8)
PLAN_KNOBS = ("window", "stride", "recache", "joint")
FOLDER_NAME = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}")  # what the service names its per-request folders
WARM_UP_PROMPT = "a red circle moving right"
MAX_SEED = 2**63 - 1  # stats carry the seed, and JSON encoders (orjson, Gradio's) stop at 64-bit integers


@dataclass(frozen=True)
class Limits:
    """The most one request may ask of a Service, and whether it may name a model by its path.

    A public page needs bounds: a run's memory grows with its blocks (the KV cache holds every
    block's K/V; ``benchmarks/bench_load.py`` measures the peak at these bounds) and its time with
    blocks × steps, while the run holds the queue for everyone behind it. ``None``: no bound.
    ``model_paths``: a request may name a model folder instead of a preset; a public service
    must not load whatever path a visitor types, so only the presets are offered by default.
    """

    blocks: int | None = 16
    steps: int | None = 32
    model_paths: bool = False


# A caller on its own machine (the CLI, benchmarks): no bounds, and model folders by path.
UNLIMITED = Limits(blocks=None, steps=None, model_paths=True)


def first_line(error: BaseException) -> str:
    """What a person is shown of an error: its first line (a pool's failure goes on with a
    worker's traceback, for whoever reads the detail)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_prompt_text(prompt) -> None:
    """ValueError, one clear line, for a prompt no run could take. Values are quoted cut short:
    a visitor may send anything, of any length."""
    if not isinstance(prompt, str):
        raise ValueError(f"the prompt must be text, got {reprlib.repr(prompt)}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}")
    # nothing a reader could see: blanks, control and format characters (zero-width, direction marks)
    if not any(c.isprintable() and not c.isspace() for c in prompt):
        raise ValueError("the prompt is empty")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # JSON can carry one ("\ud800"); no file or page can show it
        raise ValueError("the prompt is not valid text: it holds a lone surrogate (U+D800 to U+DFFF)") from None


@dataclass(frozen=True)
class GenerateRequest:
    """One video: a prompt and how to run it. ``window``/``stride`` apply to cascade mode.

    Fields left None take the model's own setting (``CascadeModel.run_defaults``), else
    ``FALLBACK_DEFAULTS``; ``steps`` the model's sampler; the schedule's knobs (window, stride,
    recache, joint) the plan chosen for the request's own steps and backend (``cascade.plan``).
    ``prompt_schedule``: (block, prompt) pairs from block 0 (``parse_prompt_schedule`` reads
    the text form) used instead of ``prompt``, which, once resolved, is its block-0 prompt.
    """

    prompt: str = ""
    mode: str | None = None
    model: str | None = None
    blocks: int | None = None
    steps: int | None = None
    window: int | None = None
    stride: int | None = None
    recache: bool | None = None
    joint: bool | None = None
    executor: str = "local"
    workers: int = 2
    seed: int = 0
    threads: int | None = None
    bwcache: bool = False
    bwcache_threshold: float = 0.15
    kv_exchange: str = "auto"  # distributed: how K/V and the tokens' exchanges move (backend/kv_exchange.py)
    prompt_schedule: PromptSchedule | None = None
    # distributed: "blocks" (block b on worker b mod W) or "tokens" (every worker runs every item
    # on its share of the tokens: sequence parallelism, see cascade/model/context_parallel.py);
    # None: planned, "blocks" but for a run with ticks of one forward of several blocks (``run_placement``)
    placement: str | None = None
    # compare: the runs made, serial and cascade always; "sequence" adds SEQUENCE_LABEL's (a pool only)
    runs: tuple[str, ...] = DEFAULT_RUNS

    @property
    def bwcache_delta(self) -> float | None:
        """BWCache's threshold when the cache is on, else None (how reports record the setting)."""
        return self.bwcache_threshold if self.bwcache else None

    @property
    def prompts(self) -> PromptSchedule:
        """The run's prompt schedule: ``prompt_schedule``, or the one prompt from block 0."""
        return self.prompt_schedule or ((0, self.prompt),)

    def validate(self) -> None:
        """Raise ValueError, one clear line, for any value no run could take (before any work).
        Values are quoted cut short (``reprlib``): a visitor may send anything, of any length."""
        self._check_prompts()
        for name, allowed in (("mode", (None, *MODES)), ("executor", EXECUTORS), ("kv_exchange", KV_EXCHANGES),
                              ("placement", (None, *PLACEMENTS))):
            value = getattr(self, name)
            if value not in allowed:
                named = ", ".join(a for a in allowed if a is not None)
                raise ValueError(f"{name} must be one of {named}, got {reprlib.repr(value)}")
        if self.model is not None and not isinstance(self.model, str):
            raise ValueError(f"model must be a model's name, got {reprlib.repr(self.model)}")
        self._check_numbers()
        for name in ("recache", "joint", "bwcache"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {reprlib.repr(value)}")
        if self.placement == "tokens" and self.executor != "distributed":
            raise ValueError("placement tokens spreads every item over a pool's workers: use the distributed executor")
        self._check_runs()
        if self.joint and self.mode != "serial" and self.executor == "distributed" and self.placement == "blocks":
            raise ValueError(BLOCKS_REFUSES_ONE_FORWARD)

    def _check_prompts(self) -> None:
        if self.prompt_schedule is not None:
            first = check_prompt_schedule(self.prompt_schedule)[0][1]
            if self.prompt not in ("", first):
                raise ValueError("give a prompt or a prompt schedule, not both: the prompt differs from the "
                                 "schedule's block-0 prompt")
        for _, prompt in self.prompts:
            check_prompt_text(prompt)

    def _check_numbers(self) -> None:
        for name in ("blocks", "steps", "window", "stride", "workers", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a whole number of at least 1, got {reprlib.repr(value)}")
        cores = os.cpu_count() or 1
        if self.threads is not None and self.threads > cores:  # torch would start them all
            raise ValueError(f"threads must be at most this machine's {cores} cores, got {reprlib.repr(self.threads)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED}, got {reprlib.repr(self.seed)}")
        threshold = self.bwcache_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
            raise ValueError(f"bwcache_threshold must be a number of at least 0, got {reprlib.repr(threshold)}")

    def _check_runs(self) -> None:
        runs = self.runs
        if not isinstance(runs, (tuple, list)) or list(runs) not in (list(DEFAULT_RUNS), list(COMPARE_RUNS)):
            raise ValueError(f"runs must be {','.join(DEFAULT_RUNS)} or {','.join(COMPARE_RUNS)}, got {reprlib.repr(runs)}")
        if "sequence" in runs and self.executor != "distributed":
            raise ValueError("the sequence run splits every forward over a pool's workers: use the distributed executor")

    def resolved(self, model: CascadeModel, backend: PlanBackend | None = None) -> "GenerateRequest":
        """Every setting made concrete for ``model``; raises ValueError where they do not fit.
        The knobs left unset are planned for ``backend`` (default: the request's executor and
        workers, with no measured forward costs) from this request's own blocks and steps."""
        return self.planned(model, backend)[0]

    def planned(self, model: CascadeModel, backend: PlanBackend | None = None) -> tuple["GenerateRequest", Plan]:
        """``resolved``, with the plan that chose its schedule's knobs (and why)."""
        chosen = {}
        for name in ("mode", "blocks", "steps"):
            value = getattr(self, name)
            chosen[name] = model.run_defaults.get(name, FALLBACK_DEFAULTS.get(name)) if value is None else value
        request = replace(self, model=self.model or default_model_name(), **chosen)
        model.check_blocks(request.blocks)
        if request.prompt_schedule is not None:
            schedule = check_prompt_schedule(request.prompt_schedule, request.blocks)
            request = replace(request, prompt=schedule[0][1], prompt_schedule=schedule)
        if request.steps is None:
            request = replace(request, steps=model.sampler.num_steps)
        recache = model.run_defaults.get("recache", True) if request.recache is None else request.recache
        if request.stride is not None and request.stride > request.steps + int(recache):
            raise ValueError(f"stride must be at most the items per block ({request.steps} steps"
                             f"{' + recache' if recache else ''} = {request.steps + int(recache)}), "
                             f"got {request.stride}")
        backend = backend or PlanBackend(request.executor, request.workers, placement=request.plan_placement(model))
        if request.mode == "serial":  # one item per tick whatever the backend: only recache matters
            backend = PlanBackend("local")
        plan = choose_plan(request.blocks, request.steps, backend, **{k: getattr(request, k) for k in PLAN_KNOBS},
                           table=model.measured_plans, defaults=model.run_defaults)
        request = replace(request, **{k: getattr(plan, k) for k in PLAN_KNOBS})
        return replace(request, placement=request.run_placement(model)), plan

    def asks_joint(self, model: CascadeModel) -> bool:
        """Whether this request's cascade is joint as set, else as ``model`` runs by default (a pool's
        plan never makes it joint of its own accord)."""
        return bool(model.run_defaults.get("joint")) if self.joint is None else self.joint

    def plan_placement(self, model: CascadeModel) -> str:
        """The placement a plan for this request is fitted to, before the plan is known: as set, else
        ``tokens`` for a joint cascade on a pool (``run_placement`` then settles it), else ``blocks``."""
        joint_on_pool = self.executor == "distributed" and self.asks_joint(model)
        return self.placement or ("tokens" if joint_on_pool else "blocks")

    def run_placement(self, model: CascadeModel) -> str:
        """The placement this request (its schedule's knobs resolved) runs with: as set, else
        ``blocks``, but ``tokens`` on a pool for a run with ticks that are one forward of several
        blocks (a joint cascade, a serial run's switch pass), which only the tokens placement runs."""
        if self.executor != "distributed":
            return self.placement or "blocks"
        one_forward = self.schedule(model).has_one_forward_ticks
        if one_forward and self.placement == "blocks":
            raise ValueError(BLOCKS_REFUSES_ONE_FORWARD)
        return self.placement or ("tokens" if one_forward else "blocks")

    @property
    def items_per_block(self) -> int:
        return self.steps + int(self.recache)

    def schedule(self, model: CascadeModel):
        """The schedule this (resolved) request runs: serial, re-encoding ``model``'s attention window
        under each new prompt before its block (``switch_recache_plan``), or the cascade of its
        window and stride, which switches prompts without extra forwards."""
        if self.mode == "serial":
            return make_schedule(self.blocks, self.steps, recache=self.recache,
                                 switch_recache=switch_recache_plan(model, self.prompts))
        return make_schedule(self.blocks, self.steps, window=self.window, stride=self.stride, recache=self.recache,
                             joint=bool(self.joint))


# --- what a public page (or its API) sends ---------------------------------------------------------
# A form's settings, checked in one place before they become a request: any JSON value may
# arrive, of any length, so each check names the setting and quotes the value cut short (reprlib).

FORM_BACKENDS = {"pool": "distributed", "batched": "batched"}  # a form's backend -> the request's executor
VARIANTS = ("causal", "joint")
FORM_SEED_MAX = 2**31 - 1  # a form's seed box (and a browser's random seed)
THRESHOLD_MAX = 1.0  # a form's BWCache threshold


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


@dataclass(frozen=True)
class Offer:
    """What a public page offers on a Service (``Service.offer``): its default request (every
    setting concrete), the presets that can run here, those that cannot (with what they need, on
    one line), the most workers, and the Service's bounds on blocks and steps (``Limits``)."""

    defaults: GenerateRequest
    runnable: tuple[str, ...]
    unavailable: tuple[tuple[str, str], ...]
    max_workers: int
    max_blocks: int
    max_steps: int

    def preset(self, preset) -> str:
        """A preset on offer; only these names reach the service (never a path)."""
        if isinstance(preset, str) and preset in self.runnable:
            return preset
        needs = dict(self.unavailable).get(preset) if isinstance(preset, str) else None
        raise ValueError(f"the preset {preset!r} cannot run here: it needs {needs}" if needs else
                         f"unknown preset {reprlib.repr(preset)}; choose one of {', '.join(self.runnable)}")

    def request(self, prompt, preset, blocks, steps, backend, workers, window, stride, variant, recache, bwcache,
                threshold, seed, prompt_schedule="", runs=",".join(DEFAULT_RUNS)) -> GenerateRequest:
        """The comparison a form's (or an API call's) settings describe; ValueError, one line, for
        anything a run could not take. A ``prompt_schedule`` (its text form, one ``block: prompt``
        per line) replaces the prompt. ``window``, ``stride``, ``variant`` and ``recache`` left
        None are planned by the service for the request's own steps and backend. ``runs``: the
        runs made, comma-separated ("serial,cascade", or "serial,cascade,sequence" on a pool)."""
        if not isinstance(prompt_schedule, str):
            raise ValueError(f"the prompt schedule must be text, got {reprlib.repr(prompt_schedule)}")
        if not isinstance(runs, str):
            raise ValueError(f"runs must be text such as {','.join(COMPARE_RUNS)!r}, got {reprlib.repr(runs)}")
        schedule = parse_prompt_schedule(prompt_schedule) if prompt_schedule.strip() else None
        if schedule is not None:
            prompt = ""
        elif prompt is None or (isinstance(prompt, str) and not prompt.strip()):
            raise ValueError("the prompt is empty: describe a video, e.g. 'a red circle moving right'")
        preset = self.preset(preset)
        backend = one_of("backend", backend, FORM_BACKENDS)
        variant = None if variant is None else one_of("variant", variant, VARIANTS)
        recache = None if recache is None else flag("recache", recache)
        bwcache = flag("bwcache", bwcache)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= THRESHOLD_MAX:
            raise ValueError(f"the BWCache threshold must be a number from 0 to {THRESHOLD_MAX}, "
                             f"got {reprlib.repr(threshold)}")
        request = GenerateRequest(  # a stride beyond the items per block is refused once the model is known
            prompt=prompt, prompt_schedule=schedule, mode="cascade", model=preset,
            blocks=whole("blocks", blocks, 1, self.max_blocks), steps=whole("steps", steps, 1, self.max_steps),
            window=None if window is None else whole("window", window, 1, self.max_blocks),
            stride=None if stride is None else whole("stride", stride, 1, self.max_steps + 1),
            recache=recache, joint=None if variant is None else variant == "joint", executor=FORM_BACKENDS[backend],
            workers=whole("workers", workers, 1, self.max_workers), seed=whole("seed", seed, 0, FORM_SEED_MAX),
            # a pool's workers keep the default's threads each (one core each on a CPU box); one device
            # batched uses all of it, as the service's own one-device default does
            threads=self.defaults.threads if backend == "pool" else None,
            bwcache=bwcache, bwcache_threshold=float(threshold), kv_exchange=self.defaults.kv_exchange,
            runs=tuple(run.strip() for run in runs.split(",")))
        request.validate()
        return request


@dataclass
class GenerateResult:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    stats: dict
    unknown_words: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)  # file name -> path


@dataclass
class CompareResult:
    serial: GenerateResult
    cascade: GenerateResult
    stats: dict  # serial, cascade (run stats), speedup, ideal_speedup, counted_as, quality, queued_s
    files: dict[str, Path] = field(default_factory=dict)
    sequence: GenerateResult | None = None  # the third run, when the request's runs name it

    @property
    def runs(self) -> dict[str, GenerateResult]:
        """Every run made, by name, in the order they ran."""
        made = {"serial": self.serial, "cascade": self.cascade, "sequence": self.sequence}
        return {name: run for name, run in made.items() if run is not None}


class FifoLock:
    """A lock whose waiters get their turn in the order they arrived."""

    def __init__(self):
        self._changed = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._done: set[int] = set()  # tickets done with before their turn (their waiter gave up)

    @contextmanager
    def turn(self):
        """Hold the lock; yields the seconds spent waiting for it."""
        arrived = time.perf_counter()
        with self._changed:
            ticket = self._next_ticket
            self._next_ticket += 1
            try:
                while ticket != self._serving:
                    self._changed.wait()
            except BaseException:  # interrupted while waiting (Ctrl-C): the turn must not stop here
                self._pass(ticket)
                raise
        try:
            yield time.perf_counter() - arrived
        finally:
            with self._changed:
                self._pass(ticket)

    def _pass(self, ticket: int) -> None:
        """``ticket`` is done with (served, or given up): the turn moves past it and past the
        tickets given up before it came to them. Called with the condition held."""
        self._done.add(ticket)
        while self._serving in self._done:
            self._done.remove(self._serving)
            self._serving += 1
        self._changed.notify_all()


class Service:
    """Models, worker pools and output folders, shared by every request until ``close()``.

    ``output_root``: where each request gets its own folder (default: ``cascade`` in the
    system's temp folder); ``ttl_s``: folders older than this are deleted when a new one is
    made (None: kept); ``device``: "cpu", "cuda" or "auto" (CUDA when available); ``limits``:
    the most one request may ask for (``Limits``: public bounds by default, ``UNLIMITED`` for a
    caller on its own machine); ``tick_timeout_s``: a pool's run fails when no tick finishes
    for this long (a worker hung).
    """

    def __init__(self, output_root: str | Path | None = None, ttl_s: float | None = None, device: str = "auto",
                 limits: Limits = Limits(), tick_timeout_s: float = TICK_TIMEOUT_S):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
        self.device = device
        self.output_root = Path(output_root) if output_root else Path(tempfile.gettempdir()) / "cascade"
        self.ttl_s = ttl_s
        self.limits = limits
        self.tick_timeout_s = tick_timeout_s
        self._models: dict[str, CascadeModel] = {}
        self._forward_costs: dict[tuple, ForwardCosts] = {}  # (model, threads): measured once, kept
        self._pools: dict[tuple, object] = {}
        self._turns = FifoLock()
        self._closed = False

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker pool and wait until its processes are gone; final. A run still going
        on a pool fails at once (its pool stops under it), so an application shutting down waits
        for no run; a run on one device ends first."""
        self._closed = True  # every turn from now on is refused
        for pool in list(self._pools.values()):
            pool.close()
        with self._turns.turn():  # and any pool that a run in progress started meanwhile
            while self._pools:
                self._pools.popitem()[1].close()

    # --- what a caller can offer --------------------------------------------------------

    def default_request(self, prompt: str = WARM_UP_PROMPT) -> GenerateRequest:
        """The comparison this machine runs best by default: a pool with one worker per device
        (per GPU, or per CPU core with one thread each), the model's own settings otherwise."""
        from .backend.pool import usable_cores

        workers = pool_workers(torch.cuda.device_count() if self.device == "cuda" else usable_cores())
        if not workers:
            return GenerateRequest(prompt=prompt, mode="cascade", executor="batched")
        return GenerateRequest(prompt=prompt, mode="cascade", executor="distributed", workers=workers,
                               threads=None if self.device == "cuda" else 1)

    def offer(self, defaults: GenerateRequest) -> Offer:
        """What a public page offers on this Service, ``defaults`` made concrete for its model
        (loading it, in turn); ValueError unless the Service bounds blocks and steps and takes
        presets only (``Limits``)."""
        if self.limits.blocks is None or self.limits.steps is None or self.limits.model_paths:
            raise ValueError("a public page needs a Service with bounds on blocks and steps and no model paths "
                             "(cascade.service.Limits)")
        presets = self.presets()
        request = self.resolve(replace(defaults, mode="cascade"))
        # what a preset needs, on one line: a page's messages are one line (the rest names files to fetch)
        return Offer(defaults=request, runnable=tuple(p["name"] for p in presets if p["runnable"]),
                     unavailable=tuple((p["name"], p["needs"].splitlines()[0]) for p in presets if not p["runnable"]),
                     max_workers=max(2, request.workers), max_blocks=self.limits.blocks, max_steps=self.limits.steps)

    def presets(self) -> list[dict]:
        """Every model a request may name: ``{"name", "runnable", "needs"}``; ``needs`` says why
        one cannot run here now (no GPU, weights not downloaded: what to do). Loads nothing."""
        return [{"name": p.name, "runnable": p.runnable, "needs": "" if p.runnable else p.reason}
                for p in preset_status(self._local_device())]

    def resolve(self, request: GenerateRequest) -> GenerateRequest:
        """``request`` with every setting made concrete for its model (loading the model, in
        turn), as ``generate`` and ``compare`` would run it; ValueError where settings do not fit."""
        request.validate()
        with self._turn():
            return self._resolve(request)[0]

    def plan(self, request: GenerateRequest) -> dict:
        """The plan ``request`` would run with (``plan_figures``: knobs, ticks, bound, why), as a
        cascade on its backend; loads the model and measures forward costs as a run would."""
        request = replace(request, mode="cascade")
        request.validate()
        with self._turn():
            request, model, plan = self._resolve(request)
            return plan_figures(plan, request, model, self._plan_backend(request, model))

    # --- requests ------------------------------------------------------------------------

    def generate(self, request: GenerateRequest, progress: ProgressFn | None = None, on_block=None,
                 folder: str | Path | None = None, files: bool = True) -> GenerateResult:
        """One video; ``on_block(mode, block, frames, t)`` gets each block's frames as it is final.
        Writes ``video.mp4``, ``frames.npy`` and ``stats.json`` into ``folder`` (default: a fresh
        folder under the output root); ``files=False`` writes nothing (benchmarks, evaluation)."""
        request.validate()
        with self._turn() as queued:
            request, model, plan = self._resolve(request)
            executor = self._executor(request, model)  # a request this backend cannot run leaves no folder
            held = frozenset() if leaves_a_core_free(executor, self.device) else {request.mode}
            with StreamedVideos(self._folder(folder) if files else None, model.fps,
                                {request.mode: "video.mp4"}, on_block, held) as videos:
                result = self._run(request, model, executor, progress, videos.on_block)
            if request.mode == "cascade":
                result.stats["plan"] = plan_figures(plan, request, model, self._plan_backend(request, model),
                                                    bwcache_cut(None, result.stats))
            result.stats["queued_s"] = queued
            if files:
                result.files = {**videos.files, **_write_data(videos.folder, {"frames.npy": result.frames},
                                                              result.stats)}
        return result

    def compare(self, request: GenerateRequest, progress: ProgressFn | None = None, on_block=None,
                folder: str | Path | None = None) -> CompareResult:
        """The same prompt and seed, serial and cascaded, on one backend: both runs, the speedup
        beside the ideal one, quality, and the files (see ``write_compare_files``). With
        ``request.runs`` naming "sequence", a third run: the serial schedule on the pool's
        ``tokens`` placement (sequence parallelism), with its own speedup and bound.

        Speedup is counted as the Block Cascading paper counts it: on a worker pool the serial run
        uses one worker of the kind each cascade worker is (on a CPU pool, its cores); on one
        device both runs use the same executor. ``on_block(run, block, frames, t)``: run is
        "serial", "cascade" or "sequence".
        """
        request = replace(request, mode="cascade")
        request.validate()
        with self._turn() as queued:
            request, model, plan = self._resolve(request)
            cascade_executor = self._executor(request, model)
            serial_executor = (LocalExecutor(self._local_device(), threads=cascade_executor.threads)
                               if request.executor == "distributed" else cascade_executor)
            share = 1 / len(request.runs)
            part = (lambda i: (lambda f, m: progress((i + f) * share, m))) if progress else (lambda i: None)
            executors = {"serial": serial_executor, "cascade": cascade_executor}
            if "sequence" in request.runs:
                tokens = sequence_request(request)
                executors["sequence"] = self._executor(tokens, model)
            held = frozenset(run for run, e in executors.items() if not leaves_a_core_free(e, self.device))
            with StreamedVideos(self._folder(folder), model.fps, {run: f"{run}.mp4" for run in request.runs},
                                on_block, held) as videos:
                serial = self._run(replace(request, mode="serial", joint=False), model, serial_executor, part(0),
                                   videos.on_block)
                cascade = self._run(request, model, cascade_executor, part(1), videos.on_block)
                sequence = None
                if "sequence" in request.runs:
                    sequence = self._run(tokens, model, executors["sequence"], part(2), videos.on_block,
                                         name="sequence")
                videos.release()
                result = CompareResult(serial, cascade, {}, sequence=sequence)
                with ThreadPoolExecutor(max_workers=1, thread_name_prefix="side-by-side") as beside:
                    # the held videos and the side-by-side encode while the quality figures are computed
                    side_by_side = beside.submit(write_side_by_side_file, videos.folder, result, model.fps)
                    stats = comparison_stats(result, request, model, plan, self._plan_backend(request, model))
                    waited = time.perf_counter()
                    videos.files["side_by_side.mp4"] = side_by_side.result()
                    beside_s = time.perf_counter() - waited
            stats["files_s"] = {"videos": beside_s + videos.closing_s}
            stats["queued_s"] = queued
            result.stats = metrics.json_safe(stats)
            result.files = write_compare_files(videos.folder, result, videos.files)
        return result

    def warm_up(self, request: GenerateRequest | None = None, executors: tuple[str, ...] = ()) -> None:
        """Load the model, start the pool and run a short comparison on every executor that
        ``request`` (default: the default comparison) uses, files included, so that the first
        request a user makes is timed like every later one: on a GPU, every executor's first CUDA
        kernels (and a pool's first NCCL exchange) run here. ``executors``: more executors a
        caller will offer besides the request's own (a page's one-device backend beside its pool),
        each warmed with the request's model and video on it, the schedule's knobs and placement
        planned for it as a page leaves them; a one-device executor that is not the request's own uses the whole
        device (``threads`` None), as a page's one-device backend does. The short runs keep the
        video's geometry (so pools reuse their K/V caches) and run one step per block. A pool's
        comparison runs its serial side on one device (``local``) as well, and its sequence run
        (the tokens placement) when the request's runs name it."""
        request = replace(request or GenerateRequest(prompt=WARM_UP_PROMPT), mode="cascade")
        others = [replace(request, executor=e, threads=None if e != "distributed" else request.threads,
                          runs=request.runs if e == "distributed" else DEFAULT_RUNS, placement=None,
                          **dict.fromkeys(PLAN_KNOBS))
                  for e in dict.fromkeys(executors) if e != request.executor]
        for each in (request, *others):  # a request that cannot run fails here, before the warm-up's work
            self.resolve(each)
        for each in (request, *others):
            short = replace(each, prompt=WARM_UP_PROMPT, prompt_schedule=None, steps=1, stride=1)
            with tempfile.TemporaryDirectory() as folder:
                self.compare(short, folder=folder)

    # --- inside a turn ---------------------------------------------------------------------

    @contextmanager
    def _turn(self):
        with self._turns.turn() as queued:
            if self._closed:
                raise RuntimeError("this Service is closed")
            yield queued

    def _resolve(self, request: GenerateRequest) -> tuple[GenerateRequest, CascadeModel, Plan]:
        model = self._model(request.model)
        request, plan = request.planned(model, self._plan_backend(request, model))
        self._check_limits(request)
        return request, model, plan

    def _plan_backend(self, request: GenerateRequest, model: CascadeModel) -> PlanBackend:
        """What ``request``'s plan is fitted to; on one device, and for a joint plan on a pool (its
        tokens placement), with the forward costs measured here with the threads one worker has
        (each size once per service, the first time a plan needs it: the warm-up's plan at start)."""
        if request.executor != "distributed":
            return PlanBackend(request.executor, 1, self._forward_costs_of(model, request.threads))
        from .backend.pool import worker_threads  # deferred: it pulls in multiprocessing set-up

        placement = request.plan_placement(model)
        costs = None
        if placement == "tokens" and request.asks_joint(model):
            costs = self._forward_costs_of(model, worker_threads(self.device, request.workers, request.threads))
        return PlanBackend("distributed", request.workers, costs, placement=placement)

    def _forward_costs_of(self, model: CascadeModel, threads: int | None) -> ForwardCosts:
        key = (model.name, threads)
        if key not in self._forward_costs:
            self._forward_costs[key] = ForwardCosts(model, threads)
        return self._forward_costs[key]

    def _check_limits(self, request: GenerateRequest) -> None:
        """Blocks and steps within ``limits`` (checked once the model's defaults are filled in)."""
        for name in ("blocks", "steps"):
            bound, value = getattr(self.limits, name), getattr(request, name)
            if bound is not None and value > bound:
                raise ValueError(f"{name} must be at most {bound} on this service, got {reprlib.repr(value)}")

    def _model(self, name: str | None) -> CascadeModel:
        name = name or default_model_name()
        if name not in self._models:
            # load_model also takes a folder's path (the CLI's --model DIR): a public service
            # must not load whatever a visitor points it at
            if not self.limits.model_paths and name not in available_models():
                raise ValueError(f"unknown model {reprlib.repr(name)}; available: {', '.join(available_models())}")
            model = load_model(name, device=self._local_device())
            judge_of(model.world)  # a world without a judge here fails at load, not after a run
            self._models[name] = model
        return self._models[name]

    def _local_device(self) -> str:
        return "cuda:0" if self.device == "cuda" else "cpu"

    def _executor(self, request: GenerateRequest, model: CascadeModel):
        """Local executors are cheap to make; a pool is started once per setting and kept."""
        if request.executor != "distributed":
            return LocalExecutor(self._local_device(), batched=request.executor == "batched", threads=request.threads)
        from .backend.pool import DistributedExecutor  # deferred: it pulls in multiprocessing set-up

        key = (request.model, request.workers, request.threads, request.kv_exchange)
        if key not in self._pools:
            self._pools[key] = DistributedExecutor(PresetLoader(request.model), workers=request.workers,
                                                   device=self.device, threads_per_worker=request.threads,
                                                   kv_exchange=request.kv_exchange, tick_timeout_s=self.tick_timeout_s)
        return self._pools[key].placed(request.placement)

    def _run(self, request: GenerateRequest, model: CascadeModel, executor, progress, on_block,
             name: str | None = None) -> GenerateResult:
        """One run; ``on_block`` hears its blocks as the run ``name`` (default: its mode)."""
        schedule = request.schedule(model)
        bwcache = BWCacheConfig(request.steps, threshold=request.bwcache_threshold) if request.bwcache else None
        name = name or request.mode
        frames_to = (lambda block, frames, t: on_block(name, block, frames, t)) if on_block else None
        output = BlockCausalPipeline(model)(request.prompts, schedule, executor, seed=request.seed,
                                            joint=request.joint, progress=progress, request_id=uuid.uuid4().hex,
                                            bwcache=bwcache, on_block=frames_to)
        return GenerateResult(frames=output.frames, stats=metrics.json_safe(run_stats(request, model, executor, output)),
                              unknown_words=output.unknown_words)

    def _folder(self, folder: str | Path | None) -> Path:
        """``folder`` as given, or a fresh one under the output root (sweeping expired ones)."""
        if folder is not None:
            folder = Path(folder)
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        self.output_root.mkdir(parents=True, exist_ok=True)
        if self.ttl_s is not None:
            expired = time.time() - self.ttl_s
            for old in self.output_root.iterdir():
                if FOLDER_NAME.fullmatch(old.name) and old.is_dir() and old.stat().st_mtime < expired:
                    shutil.rmtree(old, ignore_errors=True)
        fresh = self.output_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        fresh.mkdir()
        return fresh


# --- what a run and a comparison report ----------------------------------------------------


def run_stats(request: GenerateRequest, model: CascadeModel, executor, output: PipelineOutput) -> dict:
    """Everything one run reports: its settings, timing (from its timeline and the moments its
    blocks' frames were ready), forwards, cache reuse, K/V traffic and the timeline itself."""
    schedule = output.schedule
    frames = output.frames
    # a later block's frames: a causal decoder may give the first block fewer
    timing = metrics.run_timing(output.timeline, output.block_frames[-1], schedule.num_blocks, len(frames))
    return {
        "mode": request.mode,
        "model": model.name,
        "random_weights": model.random_weights,
        "prompt": request.prompt,
        "seed": request.seed,
        "blocks": schedule.num_blocks,
        "steps": schedule.num_steps,
        "frames": int(frames.shape[0]),
        "height": int(frames.shape[1]),
        "width": int(frames.shape[2]),
        "fps_video": model.fps,
        "executor": output.executor,
        "workers": output.workers,
        "threads": getattr(executor, "threads", request.threads),
        "kv_exchange": getattr(executor, "kv_exchange", None),
        "placement": getattr(executor, "placement", "one device"),
        "window": schedule.window,
        "stride": schedule.stride,
        "recache": schedule.recache,
        "joint": request.joint,
        "ticks": schedule.num_ticks,
        "model_calls": output.model_calls,
        **timing,
        # when a viewer first sees frames: block 0 decoded and handed on (the timeline's figure is
        # the end of block 0's last forward, which may be a recache after its frames are final)
        "time_to_first_block_s": output.shown_s[0],
        "blocks_shown_s": output.shown_s,
        "block_frames": output.block_frames,
        "prompt_schedule": [list(entry) for entry in output.prompts],
        "switches": switch_figures(schedule, output),
        "cross_attention_builds": output.cross_attention_builds,
        "text_encode_s": output.text_s,
        "decode_s": output.decode_s,
        "unknown_words": output.unknown_words,
        "bwcache": cache_figures(output.bwcache, len(model.transformer.blocks), timing["forwards"]),
        **communication_figures(output.communication),
        "timeline": [entry.as_dict() for entry in output.timeline],
    }


def switch_figures(schedule, output: PipelineOutput) -> list[dict]:
    """Per prompt switch: its block and prompt; ``latency_s``, from the last block shown under the
    old prompt to the first shown under the new one (``blocks_shown_s`` of blocks k−1 and k);
    ``forwards``, the items spent on the switch (its switch pass's blocks: none in a cascade); ``at_s``,
    when the first forward under the new prompt started (the switch's moment)."""
    figures = []
    for block, prompt in output.prompts[1:]:
        first_tick = set(schedule.ticks[schedule.switch_tick(block)])
        figures.append({
            "block": block, "prompt": prompt, "latency_s": output.shown_s[block] - output.shown_s[block - 1],
            "forwards": len(schedule.switch_items(block)),
            "at_s": min(e.start for e in output.timeline if WorkItem(e.block, e.step) in first_tick),
        })
    return figures


def cache_figures(stats: dict | None, layers: int, items: int) -> dict:
    """Reuse rate and transformer-block computations done and saved (none without the cache)."""
    if stats is None:
        return {"enabled": False, "reuse_rate": 0.0, "block_computations": items * layers,
                "block_computations_saved": 0}
    return {"enabled": True, "threshold": stats["threshold"], "reuse_interval": stats["reuse_interval"],
            "reuse_rate": stats["reuse_rate"], "block_computations": stats["block_computations"],
            "block_computations_saved": stats["block_computations_skipped"],
            "block_computation_reduction": stats["block_computation_reduction"],
            "indicator": stats["indicator"]}


def communication_figures(entries: list) -> dict:
    """Seconds the most-blocked worker's items spent waiting for K/V on their way (on the tokens
    placement: in collectives), summed over the run's ticks, each worker's such sum, and the bytes
    sent; empty for executors that move nothing."""
    if not entries:
        return {}
    by_worker = [sum(e.blocked_s for e in entries if e.worker == w) for w in sorted({e.worker for e in entries})]
    sent = sum(e.sent_bytes for e in entries)
    return {"communication_s": max(by_worker), "communication_s_by_worker": by_worker, "communication_bytes": sent}


def bwcache_cut(serial: dict | None, cascade: dict) -> float:
    """How much fewer transformer-block computations the cascade ran than serial (or than a plain
    run of its own forwards, without a serial run): BWCache's measured cut, 1 without it."""
    def reduction(stats: dict | None) -> float:
        cache = stats["bwcache"] if stats else None
        return cache["block_computation_reduction"] if cache and cache["enabled"] else 1.0

    return reduction(cascade) / reduction(serial)


def plan_figures(plan: Plan, request: GenerateRequest, model: CascadeModel, backend: PlanBackend,
                 cut: float = 1.0) -> dict:
    """A cascade's plan as stats: its knobs, placement, ticks, the bound on its backend (times
    BWCache's measured ``cut``) beside the tick ratio, why it was chosen and a line for the page."""
    serial, schedule = replace(request, mode="serial").schedule(model), request.schedule(model)
    reach = bound(serial, schedule, backend, plan.joint) * cut
    figures = {"name": plan.name, "window": plan.window, "stride": plan.stride, "recache": plan.recache,
               "joint": plan.joint, "placement": request.placement if backend.executor == "distributed" else "one device",
               "executor": backend.executor, "workers": backend.workers, "ticks": schedule.num_ticks,
               "bound": reach, "tick_ratio": tick_ratio(serial, schedule), "bwcache_cut": cut, "reason": plan.reason,
               "summary": describe(plan, schedule, backend, reach), "assumes": assumptions(backend, cut != 1.0, plan.joint)}
    if isinstance(backend.forward_seconds, ForwardCosts):  # the costs measured on this service's device
        figures["forward_ms"] = backend.forward_seconds.as_dict()
    return figures


def sequence_request(request: GenerateRequest) -> GenerateRequest:
    """compare's third run: the serial schedule, every item on every worker of the request's pool."""
    return replace(request, mode="serial", joint=False, placement="tokens")


def sequence_figures(request: GenerateRequest, model: CascadeModel, serial_stats: dict, sequence_stats: dict) -> dict:
    """The sequence run's plan: the serial schedule on the tokens placement and its bounds: with
    free communication (``bound``: each forward shared by the workers, times BWCache's measured
    cut), and with the communication the run measured (``bound_with_communication``, see
    ``plan.bound_with_communication``: serial's latency over its share of serial's time plus
    ``mean_communication_s``, the seconds a worker spent in collectives, averaged over the workers)."""
    backend = PlanBackend("distributed", request.workers, placement="tokens")
    serial = replace(request, mode="serial").schedule(model)
    cut = bwcache_cut(serial_stats, sequence_stats)
    reach = bound(serial, serial, backend) * cut
    communication = statistics.mean(sequence_stats["communication_s_by_worker"])  # measured in every tick
    plan = Plan(1, serial.stride, serial.recache, False, "the serial schedule, its tokens shared by the workers")
    return {"name": "serial", "placement": "tokens", "workers": request.workers, "ticks": serial.num_ticks,
            "bound": reach, "bwcache_cut": cut, "mean_communication_s": communication,
            "bound_with_communication": bound_with_communication(serial_stats["latency_s"], reach, communication),
            "reason": plan.reason, "summary": describe(plan, serial, backend, reach),
            "assumes": assumptions(backend, cut != 1.0),
            "assumes_with_communication": ("with communication: serial's latency over its share of serial's time "
                                           "per forward plus the seconds a worker spent exchanging tokens in this "
                                           "run, averaged over the workers (a bound while the workers' shares of "
                                           "a forward take at least serial's time per forward together)")}


def comparison_stats(result: CompareResult, request: GenerateRequest, model: CascadeModel, plan: Plan,
                     backend: PlanBackend) -> dict:
    serial, cascade = result.serial, result.cascade
    s, c = serial.stats, cascade.stats
    figures = plan_figures(plan, request, model, backend, bwcache_cut(s, c))
    started = time.perf_counter()
    judged = quality(serial, cascade, request.prompts, model)
    if result.sequence is not None:
        judged["sequence"] = {"psnr_db": metrics.psnr(serial.frames, result.sequence.frames),
                              "ssim": metrics.ssim(serial.frames, result.sequence.frames)}
    if request.executor == "distributed":
        counted_as = (f"serial on one worker of the kind each of the {c['workers']} cascade workers is "
                      f"({c['threads']} thread{'s' if c['threads'] != 1 else ''} each), as the Block Cascading paper counts")
    else:
        counted_as = f"both runs on the same {c['executor']} executor on one device"
    stats = {
        "serial": s,
        "cascade": c,
        "speedup": s["latency_s"] / c["latency_s"],
        "ideal_speedup": figures["bound"],  # what this backend could reach with this plan: a true bound
        "tick_ratio": figures["tick_ratio"],
        "plan": figures,
        "counted_as": counted_as,
        "quality": judged,
        "quality_s": time.perf_counter() - started,
    }
    if result.sequence is not None:
        q = result.sequence.stats
        stats.update(sequence=q, sequence_speedup=s["latency_s"] / q["latency_s"],
                     sequence_plan=sequence_figures(request, model, s, q))
    return stats


def quality(serial: GenerateResult, cascade: GenerateResult, prompts: PromptSchedule, model: CascadeModel) -> dict:
    """Cascade against serial (PSNR, SSIM) and, for models whose world has a judge, its verdict
    on each run against the prompt; with prompt switches, on each run's stretch of each prompt
    (``analyzer_segments``, see ``metrics.prompt_segments``)."""
    figures = {"psnr_db": metrics.psnr(serial.frames, cascade.frames), "ssim": metrics.ssim(serial.frames, cascade.frames)}
    judge = judge_of(model.world)
    if judge is None or model.random_weights:
        return figures
    runs = {"serial": serial, "cascade": cascade}
    if len(prompts) == 1:
        figures["analyzer"] = {name: judge(run.frames, prompts[0][1]) for name, run in runs.items()}
    else:
        figures["analyzer_segments"] = {
            name: metrics.judge_segments(judge, run.frames, run.stats["block_frames"], prompts)
            for name, run in runs.items()}
    return figures


# --- files ---------------------------------------------------------------------------------


def view_scale(height: int) -> int:
    """Nearest-neighbour upscaling for viewing: a 64-pixel video is shown at 256."""
    return max(1, 256 // height)


class StreamedVideos:
    """Each run's mp4 in ``folder``, written as the run hands its blocks on (``video.Mp4Writer``):
    ``names`` maps a run ("serial", "cascade") to its file. ``on_block(run, block, frames, t)``
    feeds the run's writer and then calls the caller's ``on_block``; the blocks of a run in
    ``held`` wait until ``release()`` (one that leaves no core for ffmpeg: see
    ``leaves_a_core_free``). Leaving the ``with`` block releases what is held and finishes the
    files (``files``; ``closing_s``: how long that took beyond the runs). With no folder, nothing
    is written and the caller's ``on_block`` is called as it is."""

    def __init__(self, folder: Path | None, fps: float, names: dict[str, str], on_block=None,
                 held: frozenset[str] = frozenset()):
        self.folder, self.fps, self.names, self._on_block = folder, fps, names, on_block
        self._writers: dict = {}
        self._held = {run: [] for run in held}
        self.files: dict[str, Path] = {}
        self.closing_s = 0.0

    def on_block(self, run: str, block: int, frames: np.ndarray, t: float) -> None:
        if self.folder is not None:
            if run in self._held:
                self._held[run].append(frames)
            else:
                self._write(run, frames)
        if self._on_block is not None:
            self._on_block(run, block, frames, t)

    def _write(self, run: str, frames: np.ndarray) -> None:
        if run not in self._writers:
            from .video import Mp4Writer  # deferred: moviepy is slow to import

            self._writers[run] = Mp4Writer(self.folder / self.names[run], fps=self.fps,
                                           scale=view_scale(frames.shape[1]))
        self._writers[run].add(frames)

    def release(self) -> None:
        """Hand the held runs' blocks to their writers (which encode them on their own threads)."""
        for run, blocks in self._held.items():
            for frames in blocks:
                self._write(run, frames)
        self._held = {}

    def __enter__(self) -> "StreamedVideos":
        return self

    def __exit__(self, error_type, *_) -> None:
        started = time.perf_counter()
        if error_type is None:
            self.release()
        for run, writer in self._writers.items():
            try:
                self.files[self.names[run]] = writer.close()
            except Exception:
                if error_type is None:
                    raise  # else the run's own error is the one to report; its files are not kept
        self.closing_s = time.perf_counter() - started


def leaves_a_core_free(executor, device: str) -> bool:
    """Whether a run on ``executor`` leaves a CPU core for ffmpeg to encode its video on meanwhile.
    On a 2-core box, encoding beside the default cascade (a pool of 2 one-thread workers) made
    that run 6% slower, and the speedup shown with it; so such a run's video waits for its end."""
    from .backend.pool import usable_cores

    if device == "cuda":
        return True
    cores = usable_cores()
    return getattr(executor, "workers", 1) * (executor.threads or cores) < cores


def run_label(name: str, workers: int | None) -> str:
    """What a run is called on the page and in the side-by-side video (``workers``: the sequence run's pool)."""
    return RUN_LABELS.get(name) or SEQUENCE_LABEL.format(workers=workers)


def write_side_by_side_file(folder: Path, result: CompareResult, fps: float) -> Path:
    """The labelled ``side_by_side.mp4``: every run, in a column under its name and latency."""
    from .video import write_side_by_side

    runs = result.runs
    labels = tuple(f"{run_label(name, run.stats['workers'])} {run.stats['latency_s']:.2f}s" for name, run in runs.items())
    return write_side_by_side([run.frames for run in runs.values()], labels, folder / "side_by_side.mp4", fps=fps,
                              scale=view_scale(result.serial.frames.shape[1]))


def write_compare_files(folder: Path, result: CompareResult, videos: dict[str, Path]) -> dict[str, Path]:
    """Beside the ``videos`` (``serial.mp4``, ``cascade.mp4``, ``sequence.mp4`` when it ran, the
    labelled ``side_by_side.mp4``): every run's frames (``frames_serial.npy``,
    ``frames_cascade.npy``, ``frames_sequence.npy``), ``timeline.json`` (every forward of every
    run: run, worker, block, step, start, end) and ``stats.json``."""
    runs = result.runs
    started = time.perf_counter()
    timeline = [{"run": name, **entry} for name, run in runs.items() for entry in run.stats["timeline"]]
    timeline_path = folder / "timeline.json"
    timeline_path.write_text(json.dumps(timeline) + "\n")
    # what writing costs a visitor beyond the runs (the app's overhead, benchmarks/bench_app.py)
    result.stats["files_s"]["timeline"] = time.perf_counter() - started
    files = {**videos, "timeline.json": timeline_path}
    files.update(_write_data(folder, {f"frames_{name}.npy": run.frames for name, run in runs.items()}, result.stats))
    return files


def _write_data(folder: Path, arrays: dict[str, np.ndarray], stats: dict) -> dict[str, Path]:
    files = {}
    for name, array in arrays.items():
        np.save(folder / name, array)
        files[name] = folder / name
    (folder / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    files["stats.json"] = folder / "stats.json"
    return files
