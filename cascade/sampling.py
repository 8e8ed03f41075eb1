"""Few-step flow-matching sampling as the block-causal models use it (Self-Forcing, CausVid).

A step predicts the clean block x0; between steps x0 is re-noised to the next noise level,
``x_t' = (1 - σ_t') x0 + σ_t' ε``. The distilled few-step models draw a fresh ε each step; a
model trained by plain regression (the bundled tiny one) predicts a posterior mean, which fresh
noise would wash out, so it keeps the ε its input carries (the deterministic DDIM/Euler step).
Fresh noise is drawn from a generator seeded by ``(seed, block, step)`` so that every executor,
and the serial and cascaded runs, use the same noise for the same item wherever it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
RENOISE = ("fresh", "ode")


def warp_timestep(t: float, shift: float) -> float:
    """Shifted flow-matching time: σ' = shift·σ / (1 + (shift − 1)·σ), with σ = t / 1000."""
    sigma = t / NUM_TRAIN_TIMESTEPS
    return NUM_TRAIN_TIMESTEPS * shift * sigma / (1 + (shift - 1) * sigma)


def original_schedule(shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The shifted schedule as the Self-Forcing family computes it, in float32: its scheduler's
    1000-point grid (``FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True)``,
    ``set_timesteps(1000)`` in those projects' ``utils/scheduler.py``): σ from
    ``linspace(1, 0, 1001)[:-1]``, shifted, and timesteps σ·1000. Returns (timesteps, sigmas).
    The closed form in float64 differs from it by up to ~1e-4 in the timestep."""
    sigmas = torch.linspace(1.0, 0.0, NUM_TRAIN_TIMESTEPS + 1, dtype=torch.float32)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return sigmas * NUM_TRAIN_TIMESTEPS, sigmas


def _on_original_grid(timesteps: tuple[float, ...], shift: float, warp: bool) -> tuple[tuple, tuple]:
    """(model timesteps, sigmas) as the originals pick them from ``original_schedule``: a warped
    step t is the grid's timestep at index 1000 − t (the nearest to the closed form for any t); an
    unwarped one reaches the model as given. σ is always the grid's at the timestep nearest the
    model's (their ``argmin |timesteps − t|`` in add_noise and the flow-to-x0 conversion)."""
    grid, sigmas = original_schedule(shift)
    model_steps, step_sigmas = [], []
    for t in timesteps:
        target = warp_timestep(t, shift) if warp else float(t)
        nearest = int((grid.double() - target).abs().argmin())
        model_steps.append(float(grid[nearest]) if warp else float(t))
        step_sigmas.append(float(sigmas[nearest]))
    return tuple(model_steps), tuple(step_sigmas)


def x0_from_flow(x_t: torch.Tensor, flow: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Wan predicts the flow v = ε − x0 of x_t = (1 − σ) x0 + σ ε, so x0 = x_t − σ v."""
    return x_t - sigma * flow


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    return (1 - sigma) * x0 + sigma * noise


def item_noise(seed: int, block: int, step: int, shape: tuple[int, ...], device=None, dtype=None) -> torch.Tensor:
    """Gaussian noise that depends only on (seed, block, step): the same on every executor."""
    state = np.random.SeedSequence([seed, block, step]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    return noise.to(device=device, dtype=dtype or torch.float32)


@dataclass(frozen=True)
class FlowMatchSampler:
    """The denoising steps of one block and the math between them.

    ``timesteps`` are on the 0..1000 scale; with ``warp`` they are mapped through the shifted
    schedule (Self-Forcing: [1000, 750, 500, 250] with shift 5 → [1000, 937.5, 833.3, 625]);
    without it they are used as given (CausVid lists already shifted values).
    ``prediction`` says what the transformer outputs: ``"flow"`` (Wan, v = ε − x0) or
    ``"sample"`` (x0 directly; the bundled tiny model, whose tokens are wider than the model).
    ``renoise`` says where the next step's ε comes from: ``"fresh"`` (new noise, as Self-Forcing
    and CausVid sample) or ``"ode"`` (the ε implied by x_t and x0, for regression-trained models).
    ``original_grid``: take timesteps and σ from the originals' float32 grid (``original_schedule``),
    as the checkpoints of the Self-Forcing family were trained and sample; else the closed form.
    """

    timesteps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    shift: float = 5.0
    warp: bool = True
    prediction: str = "flow"
    renoise: str = "fresh"
    original_grid: bool = False
    model_timesteps: tuple[float, ...] = field(init=False, repr=False)
    sigmas: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self):
        if self.prediction not in ("flow", "sample"):
            raise ValueError(f"prediction must be 'flow' or 'sample', got {self.prediction!r}")
        if self.renoise not in RENOISE:
            raise ValueError(f"renoise must be one of {', '.join(RENOISE)}, got {self.renoise!r}")
        if not self.timesteps:
            raise ValueError("a sampler needs at least one timestep")
        if self.original_grid:
            steps, sigmas = _on_original_grid(self.timesteps, self.shift, self.warp)
        else:
            steps = tuple(warp_timestep(t, self.shift) if self.warp else float(t) for t in self.timesteps)
            sigmas = tuple(t / NUM_TRAIN_TIMESTEPS for t in steps)
        object.__setattr__(self, "model_timesteps", steps)
        object.__setattr__(self, "sigmas", sigmas)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def with_steps(self, num_steps: int) -> "FlowMatchSampler":
        """The same sampler with ``num_steps`` evenly spaced timesteps from 1000 down, shifted."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}")
        raw = tuple(NUM_TRAIN_TIMESTEPS * (1 - i / num_steps) for i in range(num_steps))
        return FlowMatchSampler(raw, self.shift, True, self.prediction, self.renoise, self.original_grid)

    def predict_x0(self, x_t: torch.Tensor, model_output: torch.Tensor, step: int) -> torch.Tensor:
        if self.prediction == "sample":
            return model_output
        return x0_from_flow(x_t, model_output, self.sigmas[step])

    def implied_noise(self, x_t: torch.Tensor, x0: torch.Tensor, step: int) -> torch.Tensor:
        """The ε with ``x_t = (1 - σ) x0 + σ ε`` at step ``step``."""
        sigma = self.sigmas[step]
        return (x_t - (1 - sigma) * x0) / sigma

    def next_input(self, x_t: torch.Tensor, x0: torch.Tensor, step: int,
                   fresh_noise: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The input of step ``step + 1``: x0 re-noised to that step's level.

        ``fresh_noise`` is only called when the sampler draws new noise."""
        noise = fresh_noise() if self.renoise == "fresh" else self.implied_noise(x_t, x0, step)
        return add_noise(x0, noise, self.sigmas[step + 1])
