"""The Hub presets as ``CascadeModel``s: fetch (or fail at once), check memory, then load.

Order matters for the user: every file is located first (the cache, else one quick request per
file), so a missing download, an offline machine or a gated repository is reported in seconds
and before anything big is read; then memory is checked against what the parts will take; only
then are weights loaded, onto empty (meta) modules so a 5 GB generator is not initialised first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file

from .base import CascadeModel, LatentLayout, on_device
from .checkpoints import (FRAMES_PER_BLOCK, TEXT_ENCODER_CONFIG, TEXT_ENCODER_INDEX, TOKENIZER_FILES,
                          TRANSFORMER_CONFIG, VAE_CONFIG, VAE_STRIDE, WAN_FPS, HubPreset, hub_preset)
from .convert import PROVENANCE_FILE, WEIGHTS_NAME, check_weights, convert_checkpoint, expected_shapes, read_config
from .hub import HubFile, cached, fetch, missing, missing_files_message, shards_of
from .placement import GB, WORKING_MEMORY, Parts, kv_cache_bytes, place
from .transformer import CausalWanTransformer
from .wan import load_text_encoder, load_vae



def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


# ----------------------------------------------------------------------------- files

def preset_files(preset: HubPreset, with_generator: bool = True) -> list[HubFile]:
    files = preset.files()
    return files if with_generator else [f for f in files if f not in (preset.generator_file, preset.lora_file)]


def fetch_preset(preset: HubPreset, with_generator: bool = True) -> dict[HubFile, Path]:
    """Local paths of every file the preset needs, the text encoder's shards included."""
    paths = fetch(preset_files(preset, with_generator), preset.name)
    paths.update(fetch(shards_of(paths[TEXT_ENCODER_INDEX], TEXT_ENCODER_INDEX), preset.name))
    return paths


def absent_files(preset: HubPreset) -> list[HubFile]:
    """What the cache lacks for the preset (any further shard too once the index is there); no network."""
    absent = missing(preset_files(preset))
    index = cached(TEXT_ENCODER_INDEX)
    shards = shards_of(index, TEXT_ENCODER_INDEX) if index is not None else []
    return absent + [f for f in missing(shards) if f not in absent]


# ----------------------------------------------------------------------------- memory

def _numel(build) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def memory_needs(preset: HubPreset, config: dict, paths: dict[HubFile, Path], dtype: torch.dtype,
                 blocks: int) -> Parts:
    """What the parts of ``preset`` take in ``dtype`` for a video of ``blocks``, counted from the
    configurations in the cache on empty (meta) modules: nothing is loaded."""
    from transformers import UMT5Config

    text_config = UMT5Config.from_pretrained(paths[TEXT_ENCODER_CONFIG].parent)
    vae_config = AutoencoderKLWan.load_config(paths[VAE_CONFIG].parent)
    return parts_of(preset, config, text_config, vae_config, dtype, blocks)


def parts_of(preset: HubPreset, config: dict, text_config, vae_config: dict, dtype: torch.dtype, blocks: int) -> Parts:
    """The parts' bytes from their configurations (transformer, ``UMT5Config``, VAE) in ``dtype``,
    the K/V cache for ``blocks`` of the preset's video."""
    from transformers import UMT5EncoderModel

    size = torch.empty((), dtype=dtype).element_size()
    _, patch_h, patch_w = config["patch_size"]
    tokens = (preset.height // VAE_STRIDE // patch_h) * (preset.width // VAE_STRIDE // patch_w)
    return Parts(
        transformer=sum(s.numel() for s in expected_shapes(config).values()) * size,
        text_encoder=_numel(lambda: UMT5EncoderModel(text_config)) * size,
        vae=_numel(lambda: AutoencoderKLWan.from_config(vae_config)) * size,
        kv_cache=kv_cache_bytes(config["num_layers"], config["num_attention_heads"], config["attention_head_dim"],
                                tokens, blocks * FRAMES_PER_BLOCK, size),
    )


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def place_text_encoder(device: torch.device, needs: Parts, free_device: int, free_host: int, name: str,
                       gpus: int = 1) -> torch.device:
    """Where the text encoder goes: on a GPU, by the memory plan of ``gpus`` GPUs of the model's
    kind (``placement.place``: with the model when its GPU holds everything the plan puts there,
    else on the CPU, where it runs once per prompt); on the CPU, with the model. ValueError when
    the parts fit nowhere."""
    if device.type == "cuda":
        plan = place(needs, gpus, free_device, free_host, name)
        return torch.device("cpu") if plan.text_encoder_device == "cpu" else device
    whole = needs.transformer + needs.vae + needs.kv_cache + needs.text_encoder + WORKING_MEMORY
    if whole > free_host:
        raise ValueError(f"{name} needs about {whole / GB:.1f} GB on the CPU and {free_host / GB:.1f} GB are free "
                         f"({needs.describe()}); free memory there or use a device with more")
    return device


def plan_text_device(preset: HubPreset, config: dict, paths: dict[HubFile, Path], device: torch.device,
                     dtype: torch.dtype) -> torch.device:
    """Where the text encoder goes for the preset's own video on this machine (its GPUs: the
    Service's default pool of one worker per GPU shares the model's GPU)."""
    blocks = preset.run_defaults.get("blocks", 1)
    needs = memory_needs(preset, config, paths, dtype, blocks)
    gpus = max(1, torch.cuda.device_count()) if device.type == "cuda" else 0
    return place_text_encoder(device, needs, free_memory(device), free_memory(torch.device("cpu")), preset.name, gpus)


# ----------------------------------------------------------------------------- loading

def generator_from_state(config: dict, state: dict[str, torch.Tensor], device, dtype: torch.dtype) -> CausalWanTransformer:
    """A CausalWanTransformer holding ``state`` (already checked), computing timesteps as Wan does."""
    with init_empty_weights():
        transformer = CausalWanTransformer.from_config(config)
    transformer.load_state_dict(state, assign=True)
    transformer.sinusoid_dtype = torch.float64
    return on_device(transformer, device, dtype)


def generator_from_checkpoint(preset: HubPreset, config: dict, paths: dict[HubFile, Path], device,
                              dtype: torch.dtype) -> CausalWanTransformer:
    lora = preset.lora
    state, _ = convert_checkpoint(paths[preset.generator_file], config, preset.key,
                                  paths[preset.lora_file] if lora else None,
                                  lora.rank if lora else None, lora.alpha if lora else None)
    return generator_from_state(config, state, device, dtype)


def generator_from_folder(folder: Path, device, dtype: torch.dtype) -> CausalWanTransformer:
    """A folder written by ``convert`` (or any diffusers Wan transformer folder)."""
    config = read_config(folder / "config.json")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ValueError(f"{folder} has no {WEIGHTS_NAME}: write it with `python -m cascade convert`")
    state = load_file(str(weights))
    check_weights(state, expected_shapes(config), str(weights))
    return generator_from_state(config, state, device, dtype)


def converted_preset(folder: Path) -> HubPreset:
    """The preset a converted folder says it belongs to."""
    provenance = json.loads((folder / PROVENANCE_FILE).read_text())
    if provenance.get("preset") is None:
        raise ValueError(f"{folder} was converted with --config and belongs to no preset: load it with "
                         "CausalWanTransformer.from_pretrained, or convert again with --preset NAME")
    return hub_preset(provenance["preset"])


def load_hub_model(preset: HubPreset, device="cpu", dtype: torch.dtype | None = None,
                   generator_folder: Path | None = None) -> CascadeModel:
    """The preset with every part loaded; its generator from ``generator_folder`` when given."""
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    paths = fetch_preset(preset, with_generator=generator_folder is None)
    config = read_config(generator_folder / "config.json" if generator_folder else paths[TRANSFORMER_CONFIG])
    text_device = plan_text_device(preset, config, paths, device, dtype)
    if generator_folder is None:
        transformer = generator_from_checkpoint(preset, config, paths, device, dtype)
    else:
        transformer = generator_from_folder(generator_folder, device, dtype)
    text = load_text_encoder(paths[TEXT_ENCODER_CONFIG].parent, paths[TOKENIZER_FILES[0]].parent, text_device,
                             dtype, device, dtype)
    decoder = load_vae(paths[VAE_CONFIG].parent, device, dtype)
    source = f" (generator from {generator_folder})" if generator_folder else ""
    return CascadeModel(
        name=preset.name, description=preset.description + source, transformer=transformer, text_encoder=text,
        decode=decoder, sampler=preset.sampler(), layout=preset_layout(preset, config), fps=WAN_FPS, random_weights=False,
        local_window=preset.local_window, sink_frames=preset.sink_frames, rolling_anchor=preset.rolling_anchor,
        max_blocks=preset.max_blocks, max_blocks_reason=preset.max_blocks_reason, new_block_decoder=decoder.new_stream,
        run_defaults=dict(preset.run_defaults),
    )


def load_hub_transformer(preset: HubPreset, device="cpu", dtype: torch.dtype | None = None,
                         generator_folder: Path | None = None) -> CausalWanTransformer:
    """Only the generator (a worker's replica): no text encoder, no VAE."""
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    if generator_folder is not None:
        return generator_from_folder(generator_folder, device, dtype)
    files = [TRANSFORMER_CONFIG, preset.generator_file] + ([preset.lora_file] if preset.lora else [])
    paths = fetch(files, preset.name)
    return generator_from_checkpoint(preset, read_config(paths[TRANSFORMER_CONFIG]), paths, device, dtype)


def preset_layout(preset: HubPreset, config: dict) -> LatentLayout:
    return LatentLayout(config["in_channels"], FRAMES_PER_BLOCK, preset.height // VAE_STRIDE, preset.width // VAE_STRIDE)


# ----------------------------------------------------------------------------- status

@dataclass(frozen=True)
class PresetStatus:
    """Whether a preset can run here now, and if not, what it needs."""

    name: str
    runnable: bool
    reason: str


def hub_preset_status(preset: HubPreset, device: torch.device) -> PresetStatus:
    """Runnable when every file is in the cache and the parts fit in memory; asks no network."""
    absent = absent_files(preset)
    if absent:  # the first line is what a page or `env` shows: what it needs, and the command that fetches it
        return PresetStatus(preset.name, False,
                            f"{len(absent)} file(s) not in the Hugging Face cache yet: `python -m cascade download "
                            f"{preset.name}` fetches them\n" + missing_files_message(preset.name, absent,
                                                                                       ["not downloaded yet"]))
    paths = {f: cached(f) for f in preset.files()}
    paths.update({f: cached(f) for f in shards_of(paths[TEXT_ENCODER_INDEX], TEXT_ENCODER_INDEX)})
    try:
        text_device = plan_text_device(preset, read_config(paths[TRANSFORMER_CONFIG]), paths, device,
                                       default_dtype(device))
    except ValueError as error:
        return PresetStatus(preset.name, False, str(error))
    return PresetStatus(preset.name, True, f"downloaded; runs on {device}, text encoder on {text_device}")
