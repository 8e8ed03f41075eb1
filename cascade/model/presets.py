"""Named models: a transformer, its text encoder, its decoder and its sampler, loaded together.

- ``tiny-shapes``: the bundled model (``cascade/weights/tiny-shapes``), pixel space, offline.
- ``random-tiny``: the same classes in the tiny configuration with *random weights*; it makes
  noise, and exists only to exercise the plumbing (tests, smoke runs).
- ``random-wan2.1-1.3b``: Wan2.1-T2V-1.3B's transformer configuration with random weights, for
  timing the full-size computation on a GPU; frames are a preview of the latents, not video.
- the Hub presets (``self-forcing-1.3b``, ``causvid-1.3b``, ``longlive-1.3b``,
  ``rolling-forcing-1.3b``; ``checkpoints.py``): real checkpoints fetched through the Hugging Face
  cache, and any folder written by ``python -m cascade convert --preset NAME``.

Every caller loads a model by name through this module, the top of the model room: it builds on
``base`` (what a model is) and on the Hub side (``checkpoints``, ``hub_models``), none of which
imports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..sampling import FlowMatchSampler
from .base import CascadeModel, LatentLayout, decode_pixels, on_device, preview_latents
from .text import TextEncoder, ToyTextEncoder, WordTokenizer
from .transformer import CausalWanTransformer

WEIGHTS_ROOT = Path(__file__).resolve().parent.parent / "weights"
TRANSFORMER_FILE = "transformer.safetensors"
MODEL_CONFIG_FILE = "model.json"
MEASURED_PLANS_FILE = "plans.json"  # the measured quality table (benchmarks/plan_table.py writes it)

WAN_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6,
)
TINY = dict(
    patch_size=(1, 8, 8), num_attention_heads=4, attention_head_dim=48, in_channels=3, out_channels=3,
    text_dim=128, freq_dim=64, ffn_dim=768, num_layers=6, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=256,
)


class RandomTextEncoder:
    """A fixed random embedding per word, for random-weight presets: no vocabulary, no training."""

    def __init__(self, dim: int, max_length: int, device, dtype):
        self.dim, self.max_length, self.device, self.dtype = dim, max_length, device, dtype

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, list[list[str]]]:
        from .text import split_words

        out = torch.zeros(len(prompts), self.max_length, self.dim)
        for row, prompt in enumerate(prompts):
            for i, word in enumerate(split_words(prompt)[: self.max_length]):
                seed = int.from_bytes(word.encode()[:8].ljust(8, b"\0"), "little") % (2**63)
                out[row, i] = torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))
        return out.to(self.device, self.dtype), [[] for _ in prompts]


def available_models() -> list[str]:
    from .checkpoints import HUB_PRESETS

    bundled = sorted(p.name for p in WEIGHTS_ROOT.iterdir() if (p / MODEL_CONFIG_FILE).exists()) if WEIGHTS_ROOT.exists() else []
    return bundled + ["random-tiny", "random-wan2.1-1.3b", *HUB_PRESETS]


# The real models in the order a GPU machine prefers them by default (the first one runnable).
PREFERRED_PRESETS = ("self-forcing-1.3b", "longlive-1.3b", "causvid-1.3b", "rolling-forcing-1.3b")


def default_model_name() -> str:
    """On CUDA the first runnable real preset (downloaded, and fitting in memory); else, and on
    the CPU, the bundled tiny-shapes. Asks no network and loads no weights."""
    if torch.cuda.is_available():
        from .checkpoints import HUB_PRESETS
        from .hub_models import hub_preset_status

        for name in PREFERRED_PRESETS:
            if hub_preset_status(HUB_PRESETS[name], torch.device("cuda")).runnable:
                return name
    return "tiny-shapes" if (WEIGHTS_ROOT / "tiny-shapes" / MODEL_CONFIG_FILE).exists() else "random-tiny"


def load_model(name: str | None = None, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> CascadeModel:
    """Load a model by name (see ``available_models``), or a bundled folder by path."""
    name = name or default_model_name()
    if name == "random-tiny":
        return _random_model(name, TINY, LatentLayout(3, 3, 64, 64), decode_pixels, 8.0, device, dtype or torch.float32,
                             "tiny configuration with RANDOM weights: plumbing only, it makes noise")
    if name == "random-wan2.1-1.3b":
        return _random_model(name, WAN_1_3B, LatentLayout(16, 3, 60, 104), preview_latents, 16.0, device,
                             dtype or torch.bfloat16, "Wan2.1-T2V-1.3B transformer with RANDOM weights: timing only")
    hub = _hub_source(name)
    if hub is not None:
        from .hub_models import load_hub_model

        preset, folder = hub
        return load_hub_model(preset, device=device, dtype=dtype, generator_folder=folder)
    folder = Path(name) if Path(name).is_dir() else WEIGHTS_ROOT / name
    if not (folder / MODEL_CONFIG_FILE).exists():
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return load_folder(folder, device=device, dtype=dtype or torch.float32)


def load_transformer(name: str | None = None, device: str | torch.device = "cpu",
                     dtype: torch.dtype | None = None) -> CausalWanTransformer:
    """Only the transformer of a model (a worker's replica): a Hub preset's text encoder and VAE,
    ~12 GB, stay unloaded."""
    hub = _hub_source(name or default_model_name())
    if hub is None:
        return load_model(name, device=device, dtype=dtype).transformer
    from .hub_models import load_hub_transformer

    preset, folder = hub
    return load_hub_transformer(preset, device=device, dtype=dtype, generator_folder=folder)


def _hub_source(name: str):
    """(preset, generator folder or None) when ``name`` is a Hub preset or a folder converted for
    one; None otherwise. Deferred imports, here and below: the Hub side (the Wan VAE, umT5,
    diffusers' checkpoint conversion) is imported only for a model that needs it."""
    from .checkpoints import HUB_PRESETS
    from .convert import PROVENANCE_FILE

    if name in HUB_PRESETS:
        return HUB_PRESETS[name], None
    folder = Path(name)
    if (folder / PROVENANCE_FILE).is_file():
        from .hub_models import converted_preset

        return converted_preset(folder), folder
    return None


def preset_status(device: str | torch.device | None = None) -> list:
    """Every model with whether it can run here now and why not (``PresetStatus``), for choosers
    that offer only runnable ones; asks no network and loads no weights."""
    from .hub_models import PresetStatus, hub_preset_status
    from .checkpoints import HUB_PRESETS

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    built_in = [PresetStatus(name, True, "bundled with the package" if name not in ("random-tiny", "random-wan2.1-1.3b")
                             else "random weights: plumbing and timing only")
                for name in available_models() if name not in HUB_PRESETS]
    if device.type != "cuda":  # full size on a CPU: minutes per video, noise only
        built_in = [PresetStatus(p.name, False, "a CUDA GPU (Wan2.1-1.3B size, random weights: for GPU timing)")
                    if p.name == "random-wan2.1-1.3b" else p for p in built_in]
    return built_in + [hub_preset_status(preset, device) for preset in HUB_PRESETS.values()]


def _random_model(name, config, layout, decode, fps, device, dtype, description) -> CascadeModel:
    with torch.random.fork_rng(devices=[]):  # the same random weights every time, the caller's RNG untouched
        torch.manual_seed(0)
        transformer = CausalWanTransformer(**config)
    transformer = on_device(transformer, device, dtype)
    text = RandomTextEncoder(config["text_dim"], 32, device, dtype)
    sampler = FlowMatchSampler((1000, 750, 500, 250), shift=5.0, warp=True, prediction="flow")
    return CascadeModel(name, description, transformer, text, decode, sampler, layout, fps, random_weights=True)


def save_folder(folder: str | Path, transformer: CausalWanTransformer, text_encoder: TextEncoder, info: dict) -> None:
    """Write a loadable model folder: transformer weights and config, text encoder, model.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16 if info.get("half", True) else torch.float32).contiguous()
             for k, v in transformer.state_dict().items()}
    save_file(state, str(folder / TRANSFORMER_FILE))
    transformer.save_config(folder)
    text_encoder.save(folder)
    (folder / MODEL_CONFIG_FILE).write_text(json.dumps(info, indent=1) + "\n")


def load_folder(folder: str | Path, device="cpu", dtype: torch.dtype = torch.float32) -> CascadeModel:
    folder = Path(folder)
    info = json.loads((folder / MODEL_CONFIG_FILE).read_text())
    transformer = CausalWanTransformer.from_config(CausalWanTransformer.load_config(folder))
    transformer.load_state_dict({k: v.float() for k, v in load_file(str(folder / TRANSFORMER_FILE)).items()})
    transformer = on_device(transformer, device, dtype)
    text = TextEncoder.from_folder(folder)
    text.encoder.to(device=device, dtype=dtype)
    sampler = FlowMatchSampler(tuple(info["timesteps"]), info["shift"], info["warp"], info["prediction"],
                               info.get("renoise", "fresh"))
    layout = LatentLayout(**info["layout"])
    return CascadeModel(
        name=info["name"], description=info["description"], transformer=transformer, text_encoder=text,
        decode=decode_pixels, sampler=sampler, layout=layout, fps=info["fps"], random_weights=False,
        local_window=info.get("local_window"), sink_frames=info.get("sink_frames", 0),
        world=info.get("world"),
        measured_plans=_measured_plans(folder),
    )


def _measured_plans(folder: Path) -> tuple:
    table = folder / MEASURED_PLANS_FILE
    return tuple(json.loads(table.read_text())["plans"]) if table.exists() else ()


@dataclass(frozen=True)
class PresetLoader:
    """How a pool worker gets its replica: ``load_model(name)`` on its own device (picklable)."""

    name: str
    dtype: str | None = None  # e.g. "bfloat16"; None: the preset's default

    def __call__(self, device: torch.device) -> torch.nn.Module:
        dtype = getattr(torch, self.dtype) if self.dtype else None
        return load_transformer(self.name, device=device, dtype=dtype)


__all__ = ["CascadeModel", "LatentLayout", "PresetLoader", "ToyTextEncoder", "WordTokenizer", "available_models",
           "load_model", "load_transformer", "preset_status"]
