"""What every model is, whichever loader made it: ``CascadeModel`` (everything a pipeline needs),
its ``LatentLayout``, the decoders of pixel-space latents, and moving a transformer to its device.

The loaders build on this module: ``presets`` (the bundled and random models, and the table of
names) and ``hub_models`` (the Hub presets). It imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..sampling import FlowMatchSampler
from .transformer import CausalWanTransformer


@dataclass(frozen=True)
class LatentLayout:
    """Geometry of one video block in the transformer's input space."""

    channels: int
    frames_per_block: int
    height: int
    width: int

    def block_shape(self) -> tuple[int, int, int, int, int]:
        return (1, self.channels, self.frames_per_block, self.height, self.width)


@dataclass
class CascadeModel:
    """Everything a pipeline needs from a model, already on its device."""

    name: str
    description: str
    transformer: CausalWanTransformer
    text_encoder: object  # encode_prompts(list[str]) -> (embeddings [B, L, D], unknown words)
    decode: Callable[[torch.Tensor], np.ndarray]  # latents [1, C, F, H, W] -> uint8 [T, H, W, 3]
    sampler: FlowMatchSampler
    layout: LatentLayout
    fps: float
    random_weights: bool
    local_window: int | None = None
    sink_frames: int = 0
    # Rolling Forcing's attention: the sinks move next to a denoising forward's window and cache
    # passes see only the most recent frames (``KVCache``)
    rolling_anchor: bool = False
    # The longest video the model runs, and why (None: no cap of its own)
    max_blocks: int | None = None
    max_blocks_reason: str = ""
    # A fresh decoder for one video's blocks, fed in block order; it may carry state from one block
    # to the next (a causal VAE's feature cache). None: ``decode`` is stateless and decodes any block.
    new_block_decoder: Callable[[], Callable[[torch.Tensor], np.ndarray]] | None = None
    # The world the model was trained on, by name (a model folder's model.json "world"), for models
    # whose world has an automatic judge; None for the others. Callers above the model look the
    # judge up by this name (``cascade.worlds``): a world builds on the model, never the reverse.
    world: str | None = None
    # Settings this model runs with unless a request says otherwise: GenerateRequest field names
    # (blocks, steps, window, stride, recache, joint, mode), e.g. a model trained for one schedule.
    run_defaults: dict = field(default_factory=dict)
    # The model's measured quality table: held-out evaluations of serial and cascaded plans (the
    # folder's ``plans.json``: mode, steps, window, stride, recache, joint, bwcache, pairs, scores),
    # from which a plan for each backend is chosen (``cascade.plan.choose_plan``).
    measured_plans: tuple = ()

    def check_blocks(self, blocks: int) -> None:
        """ValueError, one line, for a video longer than the model runs."""
        if self.max_blocks is not None and blocks > self.max_blocks:
            raise ValueError(f"{self.name} runs at most {self.max_blocks} blocks, got {blocks}: {self.max_blocks_reason}")

    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, list[list[str]]]:
        return self.text_encoder.encode_prompts(prompts)

    def block_decoder(self) -> Callable[[torch.Tensor], np.ndarray]:
        """Decodes one video block by block: ``decoder(latents [1, C, F, H, W]) -> uint8 [T, H, W, 3]``;
        the blocks' frames, concatenated, equal ``decode`` of the whole latent video."""
        return self.new_block_decoder() if self.new_block_decoder is not None else self.decode


def decode_pixels(latents: torch.Tensor) -> np.ndarray:
    """Pixel-space latents in [-1, 1], [1, 3, F, H, W] -> uint8 frames [F, H, W, 3]."""
    frames = ((latents[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()


def preview_latents(latents: torch.Tensor) -> np.ndarray:
    """A viewable stand-in for undecoded latents: the first three channels, normalised."""
    x = latents[0, :3].float()
    x = (x - x.amin()) / (x.amax() - x.amin() + 1e-6) * 2 - 1
    return decode_pixels(x[None])


def on_device(transformer: CausalWanTransformer, device, dtype: torch.dtype) -> CausalWanTransformer:
    """Move to ``device`` in ``dtype``, keeping the modules diffusers keeps in float32 there."""
    transformer = transformer.to(device=device)
    if dtype != torch.float32:
        for name, module in transformer.named_modules():
            if not any(part in transformer._keep_in_fp32_modules for part in name.split(".")):
                for param in module.parameters(recurse=False):
                    param.data = param.data.to(dtype)
    return transformer.eval()
