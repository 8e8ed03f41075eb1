"""What the app and the CLI call: load a model once, run a request, return frames and stats."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from . import metrics
from .backend import LocalExecutor
from .model.presets import CascadeModel, default_model_name, load_model
from .pipeline import BlockCausalPipeline, ProgressFn
from .schedule import make_schedule

MODES = ("serial", "cascade")
EXECUTORS = ("local", "batched")


@dataclass(frozen=True)
class GenerateRequest:
    """One video: a prompt and how to run it. ``window``/``stride`` apply to cascade mode."""

    prompt: str
    mode: str = "serial"
    model: str | None = None
    blocks: int = 8
    steps: int | None = None
    window: int = 4
    stride: int = 1
    recache: bool = True
    joint: bool = False
    executor: str = "local"
    seed: int = 0
    threads: int | None = None

    def validate(self) -> None:
        if not self.prompt or not self.prompt.strip():
            raise ValueError("the prompt is empty")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.blocks < 1:
            raise ValueError(f"blocks must be at least 1, got {self.blocks}")


@dataclass
class GenerateResult:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    stats: dict
    unknown_words: list[str] = field(default_factory=list)


@lru_cache(maxsize=4)
def get_model(name: str | None = None) -> CascadeModel:
    """Models are loaded once per process and shared by every request."""
    return load_model(name or default_model_name())


def generate(request: GenerateRequest, progress: ProgressFn | None = None) -> GenerateResult:
    request.validate()
    model = get_model(request.model)
    steps = request.steps or model.sampler.num_steps
    if request.mode == "serial":
        window, stride = 1, None
    else:
        window, stride = request.window, request.stride
    schedule = make_schedule(request.blocks, steps, window=window, stride=stride, recache=request.recache)
    executor = LocalExecutor(batched=request.executor == "batched", threads=request.threads)
    output = BlockCausalPipeline(model)(request.prompt, schedule, executor, seed=request.seed,
                                       joint=request.joint, progress=progress)
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
        "threads": request.threads,
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
        "timeline": [entry.as_dict() for entry in output.timeline],
    }
    return GenerateResult(frames=frames, stats=metrics.json_safe(stats), unknown_words=output.unknown_words)
