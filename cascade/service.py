"""What the app and the CLI call: load a model once, run a request, return frames and stats.

Models and distributed worker pools are created once per process and shared by every request,
so the serial and the cascaded run of a comparison use the same backend.
"""

from __future__ import annotations

import atexit
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from . import metrics
from .backend import LocalExecutor
from .caching import BWCacheConfig, apply_bw_cache, bw_cache_stats, remove_bw_cache
from .model.presets import CascadeModel, default_model_name, load_model
from .pipeline import BlockCausalPipeline, ProgressFn
from .schedule import make_schedule

MODES = ("serial", "cascade")
EXECUTORS = ("local", "batched", "distributed")


@dataclass(frozen=True)
class GenerateRequest:
    """One video: a prompt and how to run it. ``window``/``stride`` apply to cascade mode."""

    prompt: str
    mode: str = "serial"
    model: str | None = None
    blocks: int = 8
    steps: int | None = None
    window: int = 4
    stride: int = 2
    recache: bool = True
    joint: bool = False
    executor: str = "local"
    workers: int = 2
    seed: int = 0
    threads: int | None = None
    bwcache: bool = False
    bwcache_threshold: float = 0.15

    @property
    def bwcache_delta(self) -> float | None:
        """BWCache's threshold when the cache is on, else None (how reports record the setting)."""
        return self.bwcache_threshold if self.bwcache else None

    def validate(self) -> None:
        if not self.prompt or not self.prompt.strip():
            raise ValueError("the prompt is empty")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.blocks < 1:
            raise ValueError(f"blocks must be at least 1, got {self.blocks}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.joint and self.executor == "distributed":
            raise ValueError("the joint variant runs a tick as one forward on one device: use a local executor")
        if self.bwcache and self.executor == "distributed":
            raise ValueError("BWCache runs on local executors only for now: its hooks live on this process's model")
        if self.bwcache_threshold < 0:
            raise ValueError(f"bwcache_threshold must be at least 0, got {self.bwcache_threshold}")


@dataclass
class GenerateResult:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    stats: dict
    unknown_words: list[str] = field(default_factory=list)


@lru_cache(maxsize=4)
def get_model(name: str | None = None) -> CascadeModel:
    """Models are loaded once per process and shared by every request."""
    return load_model(name or default_model_name())


_POOLS: dict[tuple, object] = {}


def get_executor(kind: str, model_name: str, workers: int = 2, threads: int | None = None, kv_exchange: str = "auto"):
    """Local executors are cheap to make; a distributed pool is started once and kept."""
    if kind == "distributed":
        from .backend.distributed import DistributedExecutor

        key = (model_name, workers, threads, kv_exchange)
        if key not in _POOLS:
            _POOLS[key] = DistributedExecutor(model_name, workers=workers, threads_per_worker=threads,
                                              kv_exchange=kv_exchange)
        return _POOLS[key]
    return LocalExecutor(batched=kind == "batched", threads=threads)


@atexit.register
def close_pools() -> None:
    while _POOLS:
        _POOLS.popitem()[1].close()


def generate(request: GenerateRequest, progress: ProgressFn | None = None) -> GenerateResult:
    request.validate()
    model = get_model(request.model)
    executor = get_executor(request.executor, model.name, request.workers, request.threads)
    return run_on(request, model, executor, progress)


def run_on(request: GenerateRequest, model: CascadeModel, executor, progress: ProgressFn | None = None) -> GenerateResult:
    """Run ``request`` on a given executor (``compare`` picks one per side)."""
    steps = request.steps or model.sampler.num_steps
    if request.mode == "serial":
        window, stride = 1, None
    else:
        window, stride = request.window, request.stride
    schedule = make_schedule(request.blocks, steps, window=window, stride=stride, recache=request.recache)
    request_id = uuid.uuid4().hex
    with bw_cache(model, request, steps, request_id) as cache_stats:
        output = BlockCausalPipeline(model)(request.prompt, schedule, executor, seed=request.seed,
                                           joint=request.joint, progress=progress, request_id=request_id)
    frames = output.frames
    frames_per_block = frames.shape[0] // request.blocks
    timing = metrics.run_timing(output.timeline, frames_per_block, request.blocks)
    stats = {
        "mode": request.mode,
        "model": model.name,
        "random_weights": model.random_weights,
        "prompt": request.prompt,
        "seed": request.seed,
        "blocks": request.blocks,
        "steps": steps,
        "frames": int(frames.shape[0]),
        "height": int(frames.shape[1]),
        "width": int(frames.shape[2]),
        "executor": output.executor,
        "workers": output.workers,
        "threads": getattr(executor, "threads", request.threads),
        "kv_exchange": getattr(executor, "kv_exchange", None),
        "window": schedule.window,
        "stride": schedule.stride,
        "recache": schedule.recache,
        "joint": request.joint,
        "ticks": schedule.num_ticks,
        "model_calls": output.model_calls,
        **timing,
        "text_encode_s": output.text_s,
        "decode_s": output.decode_s,
        "unknown_words": output.unknown_words,
        "bwcache": cache_figures(cache_stats, len(model.transformer.blocks), len(output.timeline)),
        **communication_figures(output.communication),
        "timeline": [entry.as_dict() for entry in output.timeline],
    }
    return GenerateResult(frames=frames, stats=metrics.json_safe(stats), unknown_words=output.unknown_words)


@contextmanager
def bw_cache(model: CascadeModel, request: GenerateRequest, steps: int, request_id: str):
    """BWCache hooks on the shared model for the length of one request; yields its stats dict,
    filled when the run ends (empty without the cache). Requests are served one at a time."""
    stats: dict = {}
    if not request.bwcache:
        yield stats
        return
    apply_bw_cache(model.transformer, BWCacheConfig(steps, threshold=request.bwcache_threshold))
    try:
        yield stats
        stats.update(bw_cache_stats(model.transformer, request_id))
    finally:
        remove_bw_cache(model.transformer)


def cache_figures(stats: dict, layers: int, items: int) -> dict:
    """Reuse rate and transformer-block computations done and saved (none without the cache)."""
    if not stats:
        return {"enabled": False, "reuse_rate": 0.0, "block_computations": items * layers,
                "block_computations_saved": 0}
    return {"enabled": True, "threshold": stats["threshold"], "reuse_interval": stats["reuse_interval"],
            "reuse_rate": stats["reuse_rate"], "block_computations": stats["block_computations"],
            "block_computations_saved": stats["block_computations_skipped"],
            "block_computation_reduction": stats["block_computation_reduction"]}


def communication_figures(entries: list) -> dict:
    """Seconds the most-blocked worker's items spent waiting for K/V on their way, summed over
    the run's ticks, and the bytes sent; empty for executors that move nothing."""
    if not entries:
        return {}
    workers = {e.worker for e in entries}
    blocked = max(sum(e.blocked_s for e in entries if e.worker == w) for w in workers)
    sent = sum(e.sent_bytes for e in entries)
    return {"communication_s": blocked, "communication_bytes": sent}


@dataclass
class CompareResult:
    serial: GenerateResult
    cascade: GenerateResult
    stats: dict


def compare(request: GenerateRequest, progress: ProgressFn | None = None) -> CompareResult:
    """The same prompt and seed, serial and cascaded, on one backend.

    Speedup is counted as the Block Cascading paper counts it: the serial run uses one worker of
    the kind each cascade worker is (on a distributed CPU pool, one core), and the worker counts
    of both sides are in the stats.
    """
    request = replace(request, mode="cascade")
    request.validate()
    model = get_model(request.model)
    cascade_executor = get_executor(request.executor, model.name, request.workers, request.threads)
    if request.executor == "distributed":
        serial_executor = LocalExecutor(threads=cascade_executor.threads)
    else:
        serial_executor = cascade_executor
    half = (lambda lo: (lambda f, m: progress(lo + f / 2, m))) if progress else (lambda lo: None)
    serial = run_on(replace(request, mode="serial", joint=False), model, serial_executor, half(0.0))
    cascade = run_on(request, model, cascade_executor, half(0.5))
    stats = {
        "serial": serial.stats,
        "cascade": cascade.stats,
        "speedup": serial.stats["latency_s"] / cascade.stats["latency_s"],
        "ideal_speedup": serial.stats["ticks"] / cascade.stats["ticks"],
        "quality": quality(serial.frames, cascade.frames, request.prompt, model),
    }
    return CompareResult(serial, cascade, metrics.json_safe(stats))


def quality(serial: np.ndarray, cascade: np.ndarray, prompt: str, model: CascadeModel) -> dict:
    """Cascade against serial (PSNR, SSIM) and, for the bundled shapes world, the analyzer's
    verdict on each against the prompt."""
    figures = {"psnr_db": metrics.psnr(serial, cascade), "ssim": metrics.ssim(serial, cascade)}
    if not model.random_weights and model.name == "tiny-shapes":
        from .toy.evaluate import judge

        figures["analyzer"] = {"serial": judge(serial, prompt), "cascade": judge(cascade, prompt)}
    return figures
