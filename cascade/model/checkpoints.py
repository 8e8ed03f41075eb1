"""The real block-causal checkpoints on the Hub, and the settings each runs with (REFERENCES.md).

Every one is Wan2.1-T2V-1.3B made block-causal: its text encoder (umT5-XXL), tokenizer, VAE and
transformer configuration come from the diffusers-format Wan repository, its generator weights
from the project's own checkpoint file, stored under the original Wan parameter names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..sampling import FlowMatchSampler
from .hub import HubFile

WAN_REPO = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
TRANSFORMER_CONFIG = HubFile(WAN_REPO, "transformer/config.json")
TEXT_ENCODER_CONFIG = HubFile(WAN_REPO, "text_encoder/config.json")
TEXT_ENCODER_INDEX = HubFile(WAN_REPO, "text_encoder/model.safetensors.index.json")
# umT5-XXL in float32 over the five shards the index names (REFERENCES.md): listed here too, so that
# whatever fetches ahead of time (the Space's preload_from_hub, `download`) knows them before the index
TEXT_ENCODER_SHARDS = tuple(HubFile(WAN_REPO, f"text_encoder/model-{i:05d}-of-00005.safetensors") for i in range(1, 6))
TOKENIZER_FILES = tuple(HubFile(WAN_REPO, f"tokenizer/{name}")
                        for name in ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"))
VAE_CONFIG = HubFile(WAN_REPO, "vae/config.json")
VAE_WEIGHTS = HubFile(WAN_REPO, "vae/diffusion_pytorch_model.safetensors")
BASE_FILES = (TRANSFORMER_CONFIG, TEXT_ENCODER_CONFIG, TEXT_ENCODER_INDEX, *TEXT_ENCODER_SHARDS, *TOKENIZER_FILES,
              VAE_CONFIG, VAE_WEIGHTS)

PROMPT_LENGTH = 512  # umT5 tokens; the checkpoints were trained on zero-padded 512-token prompts
VAE_STRIDE = 8  # pixels per latent position
FRAMES_PER_BLOCK = 3
WAN_FPS = 16.0


@dataclass(frozen=True)
class LoraSpec:
    """A PEFT LoRA on the generator, merged into its weights at load (W += alpha/rank · B @ A)."""

    filename: str  # in the preset's repository
    rank: int
    alpha: float


@dataclass(frozen=True)
class HubPreset:
    name: str
    description: str
    repo: str
    checkpoint: str
    key: str  # which weights of the checkpoint the project runs
    timesteps: tuple[float, ...]
    shift: float
    warp: bool
    lora: LoraSpec | None = None
    local_window: int | None = None  # this model's convention: see KVCache.context_frames
    sink_frames: int = 0
    run_defaults: dict = field(default_factory=dict)  # GenerateRequest fields the project runs with
    height: int = 480
    width: int = 832

    @property
    def generator_file(self) -> HubFile:
        return HubFile(self.repo, self.checkpoint)

    @property
    def lora_file(self) -> HubFile | None:
        return HubFile(self.repo, self.lora.filename) if self.lora else None

    def files(self) -> list[HubFile]:
        """Every file the preset needs (the loaders also fetch any further shard the index names)."""
        own = [self.generator_file] + ([self.lora_file] if self.lora else [])
        return [*BASE_FILES, *own]

    def sampler(self) -> FlowMatchSampler:
        return FlowMatchSampler(self.timesteps, self.shift, self.warp, prediction="flow")


def local_attention_window(local_attn_size: int, sink_size: int) -> tuple[int, int]:
    """(local_window, sink_frames) of this model for the Self-Forcing family's local attention.

    There, ``local_attn_size`` counts the latent frames the cache holds *sinks included*: the
    ``sink_size`` first frames plus the most recent others, the query block's own among them.
    Here the sinks come on top of a window that ends with the query block's last frame.
    """
    if not 0 <= sink_size < local_attn_size:
        raise ValueError(f"sink_size must be in [0, local_attn_size), got {sink_size} and {local_attn_size}")
    return local_attn_size - sink_size, sink_size


DEFAULT_BLOCKS = 7  # 21 latent frames = 81 video frames at 480×832, as the projects generate
LONGLIVE_WINDOW, LONGLIVE_SINKS = local_attention_window(12, 3)

# Rolling Forcing denoises a window of 5 blocks at staggered timesteps in one forward, then runs
# the window's oldest (now clean) block again at t = 0 to write its K/V. Here that is a joint
# cascade of stride 1 whose window holds 6 blocks: the 5 denoising ones and the finished one's
# recache (t = 0) pass. Its attention spans 21 latent frames: the first block as a sink plus the
# 18 frames of such a forward (or, near the end, the most recent frames up to that count).
ROLLING_WINDOW_BLOCKS = 6
ROLLING_SINKS = FRAMES_PER_BLOCK
ROLLING_LOCAL_WINDOW = ROLLING_WINDOW_BLOCKS * FRAMES_PER_BLOCK

SELF_FORCING_STEPS = (1000.0, 750.0, 500.0, 250.0)

HUB_PRESETS: dict[str, HubPreset] = {p.name: p for p in (
    HubPreset(
        "self-forcing-1.3b", "Self-Forcing (DMD) on Wan2.1-T2V-1.3B: 4 steps, recache after each block",
        "gdhe17/Self-Forcing", "checkpoints/self_forcing_dmd.pt", "generator_ema",
        SELF_FORCING_STEPS, 5.0, True, run_defaults={"blocks": DEFAULT_BLOCKS, "recache": True},
    ),
    HubPreset(
        "causvid-1.3b", "CausVid on Wan2.1-T2V-1.3B: 3 steps, recache after each block",
        "tianweiy/CausVid", "autoregressive_checkpoint/model.pt", "generator",
        (1000.0, 757.0, 522.0), 8.0, False, run_defaults={"blocks": DEFAULT_BLOCKS, "recache": True},
    ),
    HubPreset(
        "longlive-1.3b", "LongLive on Wan2.1-T2V-1.3B (base + LoRA merged): local attention of 12 frames, 3 sinks",
        "Efficient-Large-Model/LongLive-1.3B", "models/longlive_base.pt", "generator",
        SELF_FORCING_STEPS, 5.0, True, lora=LoraSpec("models/lora.pt", rank=256, alpha=256.0),
        local_window=LONGLIVE_WINDOW, sink_frames=LONGLIVE_SINKS,
        run_defaults={"blocks": DEFAULT_BLOCKS, "recache": True},
    ),
    HubPreset(
        "rolling-forcing-1.3b", "Rolling Forcing on Wan2.1-T2V-1.3B: 5 blocks denoised jointly at staggered steps",
        "TencentARC/RollingForcing", "checkpoints/rolling_forcing_dmd.pt", "generator_ema",
        (1000.0, 800.0, 600.0, 400.0, 200.0), 5.0, True,
        local_window=ROLLING_LOCAL_WINDOW, sink_frames=ROLLING_SINKS,
        run_defaults={"blocks": DEFAULT_BLOCKS, "mode": "cascade", "window": ROLLING_WINDOW_BLOCKS, "stride": 1,
                      "joint": True, "recache": True},
    ),
)}


def hub_preset(name: str) -> HubPreset:
    if name not in HUB_PRESETS:
        raise ValueError(f"unknown preset {name!r}; the Hub presets are: {', '.join(HUB_PRESETS)}")
    return HUB_PRESETS[name]
