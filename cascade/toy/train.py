"""Train the bundled tiny-shapes model: ``python -m cascade train``.

Recipe (why, in short):
- Pixel space, 64×64 RGB in [-1, 1], patch (1, 8, 8): 64 tokens per frame of 192 values, no
  autoencoder to train or ship. The transformer predicts x0 (``prediction="sample"``): the
  sampler re-noises x0 anyway, and x0 is the easier target for a narrow model.
- Block-causal, the way it is used: one forward over a clip of ``clip_blocks`` blocks of 3
  frames under a block-causal mask, each block with its own noise level (diffusion forcing),
  a quarter of the blocks clean (teacher forcing, what recache gives at inference). Noisy
  context is what a cascaded block sees, clean context what a serial one sees: both are trained.
- Clips are block-aligned crops of longer renders, so a block's context may start mid-motion, as
  it does at inference under the local window (``local_window = clip_blocks * 3`` frames: no
  block ever sees more context than training showed it).
- Prompt switches (``--switch-share``): that share of the crops changes the object's colour,
  shape or motion at one of its blocks, from where the object is, and each block is conditioned
  on its own caption (one text per latent frame in the same block-causal forward; exactly what
  inference computes when each block runs under its own prompt). Earlier blocks keep their
  caption, as in a cascade, where blocks before a switch were denoised under the old prompt.
- Plain MSE on x0. Weighing the object pixels (~3% of a frame) 10× was
  tried from step 1,000: it biases the optimal prediction towards the object's colour wherever
  the position is uncertain, and 300 steps later frames were flooded with the prompt's colour,
  the flood growing block by block. Unweighted, the model learns backgrounds first and objects
  later (plain backgrounds only at step 1,000), without that bias.
- Sampled with ``renoise="ode"`` (written into the export): plain MSE makes x0 a posterior mean,
  blurred wherever the model is unsure, and re-noising it with fresh noise (what the distilled
  Self-Forcing models do) erased objects: measured at step 5,235 on 48 held-out pairs, 4 steps,
  one object in 82% of frames with fresh noise against 94% keeping the ε the input carries.
- AdamW at a constant rate after warm-up and an EMA of the weights, so training can be stopped
  and resumed at any time; the EMA weights are what ships.
- Every random draw of step n (the clips, their noise levels, their noise) comes from generators
  seeded by (seed, n): a batch is a pure function of its step, so ``--loader-workers`` processes
  can render batches ahead in any order and a resumed run continues exactly.
- ``--device cuda`` trains under bf16 autocast; ``--minutes`` stops, saves and exports after a
  wall-clock budget (how a run on a borrowed GPU ends on time).
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..model.presets import MODEL_CONFIG_FILE, TINY, TRANSFORMER_FILE, WEIGHTS_ROOT, save_folder
from ..model.text import TextEncoder, ToyTextEncoder, WordTokenizer, load_text_encoder
from ..model.transformer import CausalWanTransformer
from ..sampling import NUM_TRAIN_TIMESTEPS, FlowMatchSampler, add_noise, warp_timestep
from . import data

FRAMES_PER_BLOCK = 3
SIZE = 64


@dataclass
class TrainConfig:
    out: str = "runs/tiny-shapes"
    # Where exports go; "" is OUT/export. The shipped weights are replaced only when asked for by
    # name (--export cascade/weights/tiny-shapes), never by default.
    export: str = ""
    # The model folder a run without a checkpoint starts from (read, never written): on a new
    # machine, the shipped weights; "" starts from random weights.
    init_from: str = str(WEIGHTS_ROOT / "tiny-shapes")
    steps: int = 20000
    batch_size: int = 8
    clip_blocks: int = 4
    render_blocks: int = 8
    lr: float = 4e-4
    warmup: int = 200
    weight_decay: float = 0.01
    ema: float = 0.995
    clean_share: float = 0.25
    # Crops whose prompt switches at one of their blocks (each block under its own caption):
    # what an interactive prompt change shows the model at inference.
    switch_share: float = 0.0
    shift: float = 5.0
    inference_timesteps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    text_dim: int = 128
    text_length: int = 16
    threads: int = 2
    device: str = "cpu"
    loader_workers: int = 0
    minutes: float = 0.0
    seed: int = 0
    log_every: int = 25
    save_every: int = 250
    export_every: int = 1000


def build_models(config: TrainConfig) -> tuple[CausalWanTransformer, TextEncoder]:
    torch.manual_seed(config.seed)
    tokenizer = WordTokenizer(data.training_vocabulary(), config.text_length)
    encoder = ToyTextEncoder(tokenizer.vocab_size, config.text_dim, config.text_length)
    transformer = CausalWanTransformer(**{**TINY, "text_dim": config.text_dim})
    return transformer, TextEncoder(tokenizer, encoder)


def block_causal_mask(num_blocks: int, tokens_per_block: int) -> torch.Tensor:
    block_of = torch.arange(num_blocks).repeat_interleave(tokens_per_block)
    return block_of[None, :] <= block_of[:, None]


def to_latents(frames: np.ndarray, device="cpu") -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float [B, 3, T, H, W] in [-1, 1] on ``device``."""
    x = torch.from_numpy(frames).to(device).float().div(127.5).sub(1)
    return x.permute(0, 4, 1, 2, 3).contiguous()


def step_seed(seed: int, step: int, stream: int) -> int:
    """A seed for one random stream (clips, noise levels, noise) of one training step."""
    state = np.random.SeedSequence([seed, step, stream]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


class NoiseLevels:
    """Per-block σ: half the draws from the inference steps, half continuous and shifted."""

    def __init__(self, config: TrainConfig):
        sampler = FlowMatchSampler(config.inference_timesteps, config.shift, warp=True, prediction="sample")
        self.inference_sigmas = torch.tensor(sampler.sigmas)
        self.shift = config.shift
        self.clean_share = config.clean_share

    def draw(self, generator: torch.Generator, batch: int, blocks: int) -> torch.Tensor:
        u = torch.rand(batch, blocks, generator=generator)
        continuous = torch.tensor([warp_timestep(float(t) * NUM_TRAIN_TIMESTEPS, self.shift) for t in u.flatten()])
        continuous = continuous.view(batch, blocks) / NUM_TRAIN_TIMESTEPS
        pick = torch.randint(len(self.inference_sigmas), (batch, blocks), generator=generator)
        sigmas = torch.where(torch.rand(batch, blocks, generator=generator) < 0.5, self.inference_sigmas[pick], continuous)
        clean = torch.rand(batch, blocks, generator=generator) < self.clean_share
        return torch.where(clean, torch.zeros_like(sigmas), sigmas)


def training_clips(config: TrainConfig, step: int) -> tuple[np.ndarray, list[list[str]]]:
    """The clips of training step ``step``: uint8 crops [B, T, H, W, 3] and each crop's caption
    per block; a ``switch_share`` of the crops switch prompt at one of their blocks.

    A pure function of (config, step), so loader processes can render it ahead of time."""
    rng = np.random.default_rng(step_seed(config.seed, step, 0))
    clips, captions = [], []
    for _ in range(config.batch_size):
        first = int(rng.integers(0, config.render_blocks - config.clip_blocks + 1))
        switch = first + int(rng.integers(1, config.clip_blocks)) if rng.random() < config.switch_share else None
        frames, block_captions = data.training_clip(rng, config.render_blocks, FRAMES_PER_BLOCK, SIZE, switch)
        clips.append(frames[first * FRAMES_PER_BLOCK : (first + config.clip_blocks) * FRAMES_PER_BLOCK])
        captions.append(block_captions[first : first + config.clip_blocks])
    return np.stack(clips), captions


def loss_on_batch(transformer, text_encoder, levels, config, clips, captions, step, mask):
    device = mask.device
    x0 = to_latents(clips, device)
    batch, blocks = x0.shape[0], config.clip_blocks
    tokens = text_encoder.tokenizer.encode([text for clip in captions for text in clip])
    context = text_encoder.encoder(tokens.ids.to(device), tokens.mask.to(device))
    context = context.unflatten(0, (batch, blocks)).repeat_interleave(FRAMES_PER_BLOCK, dim=1)  # a text per frame
    sigmas = levels.draw(torch.Generator().manual_seed(step_seed(config.seed, step, 1)), batch, blocks).to(device)
    sigma_frames = sigmas.repeat_interleave(FRAMES_PER_BLOCK, dim=1)
    noise = torch.randn(x0.shape, generator=torch.Generator(device).manual_seed(step_seed(config.seed, step, 2)),
                        device=device)
    x_t = add_noise(x0, noise, sigma_frames[:, None, :, None, None])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with autocast:
        prediction = transformer(x_t, sigma_frames * NUM_TRAIN_TIMESTEPS, context, attention_mask=mask).sample
    weights = (sigma_frames > 0)[:, None, :, None, None].float()
    per_value = (prediction.float() - x0).pow(2) * weights
    return per_value.sum() / weights.expand_as(x0).sum().clamp(min=1)


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        torch.set_num_threads(config.threads)
        self.device = torch.device(config.device)
        torch.backends.cuda.matmul.allow_tf32 = True
        self.transformer, self.text = build_models(config)
        self.transformer.to(self.device)
        self.text.encoder.to(self.device)
        self.params = list(self.transformer.parameters()) + list(self.text.encoder.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.99))
        self.ema_transformer = copy.deepcopy(self.transformer).eval()
        self.ema_encoder = copy.deepcopy(self.text.encoder).eval()
        self.levels = NoiseLevels(config)
        self.step = 0
        self.warmup_from = 0
        self.seconds = 0.0
        tokens_per_block = FRAMES_PER_BLOCK * (SIZE // TINY["patch_size"][1]) ** 2
        self.mask = block_causal_mask(config.clip_blocks, tokens_per_block).to(self.device)
        self.out = Path(config.out)

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def export_folder(self) -> Path:
        return Path(self.config.export) if self.config.export else self.out / "export"

    def resume(self) -> str | None:
        """Continue from the run's checkpoint, else from ``init_from`` (the shipped weights)."""
        if self.checkpoint_path.exists():
            self._resume_checkpoint()
            return str(self.checkpoint_path)
        if self.config.init_from and (Path(self.config.init_from) / MODEL_CONFIG_FILE).exists():
            self._resume_export(Path(self.config.init_from))
            return self.config.init_from
        return None

    def _resume_export(self, folder: Path) -> None:
        """The shipped EMA weights become both the live and the EMA weights; the optimizer
        starts afresh (its warm-up covers that). This is what a new machine resumes from: the
        repo carries the small export, not the optimizer state."""
        info = json.loads((folder / MODEL_CONFIG_FILE).read_text())
        transformer = {k: v.float() for k, v in load_file(str(folder / TRANSFORMER_FILE)).items()}
        _, encoder = load_text_encoder(folder)
        for model in (self.transformer, self.ema_transformer):
            model.load_state_dict(transformer)
        for model in (self.text.encoder, self.ema_encoder):
            model.load_state_dict(encoder.state_dict())
        self.step, self.seconds = info["training"]["steps"], float(info["training"]["seconds"])
        self.warmup_from = self.step

    def _resume_checkpoint(self) -> None:
        state = torch.load(self.checkpoint_path, weights_only=False, map_location=self.device)
        self.transformer.load_state_dict(state["transformer"])
        self.text.encoder.load_state_dict(state["text_encoder"])
        self.ema_transformer.load_state_dict(state["ema_transformer"])
        self.ema_encoder.load_state_dict(state["ema_text_encoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.seconds = state["step"], state["seconds"]
        self.warmup_from = state.get("warmup_from", 0)

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        state = {
            "transformer": self.transformer.state_dict(), "text_encoder": self.text.encoder.state_dict(),
            "ema_transformer": self.ema_transformer.state_dict(), "ema_text_encoder": self.ema_encoder.state_dict(),
            "optimizer": self.optimizer.state_dict(), "step": self.step, "seconds": self.seconds,
            "warmup_from": self.warmup_from, "config": asdict(self.config),
        }
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint_path)  # a kill mid-save never leaves a broken checkpoint

    def export(self, folder: str | Path | None = None) -> Path:
        """Write the EMA weights as the loadable model folder that ships in the repo."""
        folder = Path(folder) if folder else self.export_folder
        c = self.config
        info = {
            "name": "tiny-shapes",
            "description": "bundled tiny block-causal Wan (pixel space 64x64) trained on procedural shapes",
            "timesteps": list(c.inference_timesteps), "shift": c.shift, "warp": True, "prediction": "sample",
            "renoise": "ode",
            "layout": {"channels": 3, "frames_per_block": FRAMES_PER_BLOCK, "height": SIZE, "width": SIZE},
            "fps": 8.0, "local_window": c.clip_blocks * FRAMES_PER_BLOCK, "sink_frames": 0,
            "world": data.WORLD,
            "training": {"steps": self.step, "seconds": round(self.seconds), "batch_size": c.batch_size,
                         "clip_blocks": c.clip_blocks, "lr": c.lr, "ema": c.ema, "clean_share": c.clean_share,
                         "switch_share": c.switch_share,
                         "device": _device_name(self.device)},
        }
        save_folder(folder, self.ema_transformer, TextEncoder(self.text.tokenizer, self.ema_encoder), info)
        return folder

    def lr_at(self, step: int) -> float:
        return self.config.lr * min(1.0, (step - self.warmup_from + 1) / self.config.warmup)

    def train_step(self, clips: np.ndarray, captions: list[str]) -> float:
        self.transformer.train()
        self.text.encoder.train()
        loss = loss_on_batch(self.transformer, self.text, self.levels, self.config, clips, captions, self.step, self.mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        return loss.item()

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema, (1 + self.step) / (10 + self.step))
        for ema, live in ((self.ema_transformer, self.transformer), (self.ema_encoder, self.text.encoder)):
            torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in live.parameters()], 1 - decay)

    def batches(self):
        """(clips, captions) for every remaining step, rendered ahead by loader processes if any."""
        steps = range(self.step, self.config.steps)
        if self.config.loader_workers <= 0:
            yield from (training_clips(self.config, step) for step in steps)
            return
        context = multiprocessing.get_context("spawn")  # no fork of a process that holds a GPU
        with ProcessPoolExecutor(self.config.loader_workers, mp_context=context) as pool:
            ahead = 2 * self.config.loader_workers
            pending = deque(pool.submit(training_clips, self.config, step) for step in steps[:ahead])
            for step in steps[ahead:]:
                pending.append(pool.submit(training_clips, self.config, step))
                yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def run(self, log=print) -> None:
        c = self.config
        recent: list[float] = []
        deadline = time.monotonic() + c.minutes * 60 if c.minutes > 0 else float("inf")
        first_step, session_seconds = self.step, 0.0
        last = time.perf_counter()
        for clips, captions in self.batches():  # wall time counts waits for data too
            recent.append(self.train_step(clips, captions))
            now = time.perf_counter()
            self.seconds += now - last
            session_seconds += now - last
            last = now
            out_of_time = time.monotonic() >= deadline
            if self.step % c.log_every == 0 or out_of_time:
                log(json.dumps({"step": self.step, "loss": round(float(np.mean(recent)), 5),
                                "s_per_step": round(session_seconds / (self.step - first_step), 3),
                                "hours": round(self.seconds / 3600, 3)}))
                recent.clear()
            if self.step % c.save_every == 0 or self.step == c.steps or out_of_time:
                self.save()
            if self.step % c.export_every == 0 or self.step == c.steps or out_of_time:
                log(f"exported step {self.step} to {self.export()}")
            if out_of_time:
                log(f"stopped at step {self.step}: the {c.minutes:g}-minute budget is spent")
                return


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        if isinstance(value, tuple):
            continue
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")


def main(args: argparse.Namespace) -> int:
    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    trainer = Trainer(TrainConfig(**fields))
    log_path = Path(trainer.config.out) / "train.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(line, flush=True)
        with log_path.open("a") as f:
            f.write(line + "\n")

    source = None if args.fresh else trainer.resume()
    if source:
        log(f"resumed from {source} at step {trainer.step}")
    params = sum(p.numel() for p in trainer.params)
    log(f"training {params / 1e6:.2f}M parameters to step {trainer.config.steps}")
    trainer.run(log)
    return 0


__all__ = ["TrainConfig", "Trainer", "block_causal_mask", "main"]
