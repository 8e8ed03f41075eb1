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
    rolling_anchor: bool = False  # Rolling Forcing's sink and cache passes: see KVCache
    max_blocks: int | None = None  # the longest video it runs, where the project has no rule for longer ones
    max_blocks_reason: str = ""  # why, in words that follow "runs at most N blocks: "
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
        return FlowMatchSampler(self.timesteps, self.shift, self.warp, prediction="flow", original_grid=True)


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
# Self-Forcing attends globally over the 21 latent frames it was trained on (its 32760-token cache);
# for longer videos its causal model rolls a KV cache of ``local_attn_size`` frames with no sink
# (wan/modules/causal_model.py). At 21 frames that is the same attention up to 7 blocks and the
# most recent 21 frames beyond.
SELF_FORCING_WINDOW = 21
# CausVid was trained on 21 latent frames too, but makes longer videos another way: new rollouts
# of 21 frames, each restarted from the previous one's last frames re-encoded by the VAE
# (minimal_inference/longvideo_autoregressive_inference.py), which this package does not do.
CAUSVID_MAX_BLOCKS = DEFAULT_BLOCKS
CAUSVID_WHY = ("it was trained on 21 latent frames with global attention, and CausVid makes longer videos by "
               "restarting from re-encoded overlapping frames, which this package does not do")
LONGLIVE_WINDOW, LONGLIVE_SINKS = local_attention_window(12, 3)

# Rolling Forcing denoises a window of 5 blocks at staggered timesteps in one forward, then runs
# the window's oldest (now clean) block again at t = 0, in a forward of its own, to write its K/V.
# Here that is a joint cascade of stride 1 whose window holds 6 blocks: the 5 denoising ones and
# the finished one, whose cache pass gets a tick of its own (make_schedule(joint=True)). A
# denoising forward attends to 21 latent frames: the first block as a sink, rotated to sit right
# before the rest, plus the most recent 18 frames, its own among them; a cache pass to the 21
# most recent frames, its own among them (the rolling anchor, KVCache).
ROLLING_WINDOW_BLOCKS = 6
ROLLING_SINKS = FRAMES_PER_BLOCK
ROLLING_LOCAL_WINDOW = ROLLING_WINDOW_BLOCKS * FRAMES_PER_BLOCK

SELF_FORCING_STEPS = (1000.0, 750.0, 500.0, 250.0)

HUB_PRESETS: dict[str, HubPreset] = {p.name: p for p in (
    HubPreset(
        "self-forcing-1.3b", "Self-Forcing (DMD) on Wan2.1-T2V-1.3B: 4 steps, recache after each block",
        "gdhe17/Self-Forcing", "checkpoints/self_forcing_dmd.pt", "generator_ema",
        SELF_FORCING_STEPS, 5.0, True, local_window=SELF_FORCING_WINDOW,
        run_defaults={"blocks": DEFAULT_BLOCKS, "recache": True},
    ),
    HubPreset(
        "causvid-1.3b", "CausVid on Wan2.1-T2V-1.3B: 3 steps, recache after each block",
        "tianweiy/CausVid", "autoregressive_checkpoint/model.pt", "generator",
        (1000.0, 757.0, 522.0), 8.0, False, max_blocks=CAUSVID_MAX_BLOCKS, max_blocks_reason=CAUSVID_WHY,
        run_defaults={"blocks": DEFAULT_BLOCKS, "recache": True},
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
        local_window=ROLLING_LOCAL_WINDOW, sink_frames=ROLLING_SINKS, rolling_anchor=True,
        run_defaults={"blocks": DEFAULT_BLOCKS, "mode": "cascade", "window": ROLLING_WINDOW_BLOCKS, "stride": 1,
                      "joint": True, "recache": True},
    ),
)}


def hub_preset(name: str) -> HubPreset:
    if name not in HUB_PRESETS:
        raise ValueError(f"unknown preset {name!r}; the Hub presets are: {', '.join(HUB_PRESETS)}")
    return HUB_PRESETS[name]
