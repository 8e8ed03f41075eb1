"""Generator checkpoints in the original Wan naming -> diffusers' Wan transformer weights.

The Self-Forcing family saves its generator as ``{"generator": sd, "generator_ema": sd}`` where
``sd`` holds the original Wan parameter names under the wrapper's ``model.`` prefix (and FSDP's
``_fsdp_wrapped_module.`` in places). Conversion strips those, takes the weights the project runs,
and renames them with diffusers' own single-file Wan conversion. Weights are checked against the
transformer of the given configuration, and every missing, unexpected or wrongly shaped name is
reported. A PEFT LoRA (LongLive) is merged into the converted weights.

``python -m cascade convert CHECKPOINT (--preset NAME | --config CONFIG_JSON) --out DIR`` writes a
diffusers transformer folder that ``WanTransformer3DModel.from_pretrained`` and
``CausalWanTransformer.from_pretrained`` both load, and that ``--model DIR`` runs as the preset.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file
from torch import nn

from .checkpoints import TRANSFORMER_CONFIG, hub_preset
from .hub import fetch

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PROVENANCE_FILE = "cascade.json"  # which preset a converted folder belongs to, and its source
WRAPPER_PREFIXES = ("base_model.model.", "model.")  # PEFT's, then the Self-Forcing wrapper's
FSDP_PART = "_fsdp_wrapped_module."
GENERATOR_KEYS = ("generator_ema", "generator")  # the preference without a preset or --key
LORA_KEY = "generator_lora"
LORA_NAME = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")
NAMES_SHOWN = 8


def read_torch_file(path: str | Path) -> dict:
    """A ``torch.save``d dict, memory-mapped (a 1.3B generator is 5+ GB). Tensors and plain values
    only: unpickling arbitrary objects from a downloaded file could run code."""
    try:
        data = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise ValueError(f"cannot read {path} as a torch checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a dict of weights")
    return data


def pick_weights(data: dict, key: str | None, source: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict under ``key`` (default: generator_ema if present, else generator), or the
    file itself when it is a bare state dict; returns it and the key taken."""
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if key is not None:
        if key not in nested:
            raise ValueError(f"{source} has no weights under {key!r}; it has: {', '.join(nested) or 'none'}")
        return data[key], key
    for candidate in GENERATOR_KEYS:
        if candidate in nested:
            return data[candidate], candidate
    if data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return data, None
    raise ValueError(f"{source} has neither {' nor '.join(GENERATOR_KEYS)} (it has: {', '.join(nested) or 'none'}); "
                     "name the weights with --key")


def strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original Wan names: FSDP's wrapper parts removed, then the wrapper's prefix."""
    out = {}
    for name, tensor in state.items():
        name = name.replace(FSDP_PART, "")
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        out[name] = tensor
    return out


def to_diffusers_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' own rename of original Wan transformer names (it consumes its input)."""
    return convert_wan_transformer_to_diffusers(dict(state))


def empty_transformer(config: dict) -> WanTransformer3DModel:
    """diffusers' Wan transformer of ``config`` without memory behind its weights."""
    with init_empty_weights():
        return WanTransformer3DModel.from_config(config)


def expected_shapes(config: dict) -> dict[str, torch.Size]:
    return {name: tensor.shape for name, tensor in empty_transformer(config).state_dict().items()}


def check_weights(state: dict[str, torch.Tensor], expected: dict[str, torch.Size], source: str) -> None:
    """Every expected weight present with its shape, nothing else; else one error naming them."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{n} {list(state[n].shape)} (expected {list(expected[n])})"
                   for n in set(state) & set(expected) if state[n].shape != expected[n])
    problems = [f"{len(names)} {what}: {_some(names)}" for what, names in
                (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", wrong)) if names]
    if problems:
        raise ValueError(f"{source} does not fit the transformer configuration: " + "; ".join(problems))


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f", ... ({len(names) - NAMES_SHOWN} more)" if len(names) > NAMES_SHOWN else "")


def lora_targets(config: dict) -> set[str]:
    """The weights a LoRA on "every linear of each transformer block" adapts (diffusers names)."""
    blocks = empty_transformer(config).blocks
    return {f"{name}.weight" for name, module in blocks.named_modules(prefix="blocks") if isinstance(module, nn.Linear)}


def lora_adapters(lora: dict[str, torch.Tensor], rank: int, source: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) per adapted weight, under diffusers' names, checked to be of ``rank``."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in strip_wrappers(lora).items():
        match = LORA_NAME.match(name)
        if match is None:
            raise ValueError(f"{source}: {name!r} is not a PEFT LoRA weight (…lora_A.weight / …lora_B.weight)")
        pairs.setdefault(match["module"], {})[match["part"]] = tensor
    unpaired = sorted(m for m, p in pairs.items() if len(p) != 2)
    if unpaired:
        raise ValueError(f"{source}: LoRA modules without both A and B: {_some(unpaired)}")
    ranks = sorted({p["A"].shape[0] for p in pairs.values()} | {p["B"].shape[1] for p in pairs.values()})
    if ranks != [rank]:
        raise ValueError(f"{source} is a LoRA of rank {', '.join(map(str, ranks))}; this preset's LoRA has rank {rank}")
    # diffusers' rename applied to the names alone: no product is formed before it is merged.
    renamed = to_diffusers_names({f"{module}.weight": module for module in pairs})
    return {name: (pairs[module]["A"], pairs[module]["B"]) for name, module in renamed.items()}


def merge_lora(state: dict[str, torch.Tensor], adapters: dict[str, tuple[torch.Tensor, torch.Tensor]],
               scale: float, targets: set[str], source: str) -> dict[str, torch.Tensor]:
    """``state`` with every target weight W moved to W + scale · B @ A; every target needs an adapter."""
    missing = sorted(targets - set(adapters))
    unexpected = sorted(set(adapters) - targets)
    wrong = sorted(n for n in set(adapters) & targets
                   if (adapters[n][1].shape[0], adapters[n][0].shape[1]) != tuple(state[n].shape))
    problems = [f"{len(names)} {what}: {_some(names)}" for what, names in
                (("weights without a LoRA", missing), ("LoRA weights for no linear layer", unexpected),
                 ("wrongly shaped LoRA products", wrong)) if names]
    if problems:
        raise ValueError(f"{source} does not fit the generator: " + "; ".join(problems))
    merged = dict(state)
    for name, (a, b) in adapters.items():
        merged[name] = (state[name].float() + scale * (b.float() @ a.float())).to(state[name].dtype)
    return merged


def convert_checkpoint(checkpoint: str | Path, config: dict, key: str | None = None,
                       lora: str | Path | None = None, lora_rank: int | None = None,
                       lora_alpha: float | None = None) -> tuple[dict[str, torch.Tensor], str | None]:
    """diffusers-named, checked generator weights of ``checkpoint`` (LoRA merged); and the key taken."""
    weights, taken = pick_weights(read_torch_file(checkpoint), key, str(checkpoint))
    state = to_diffusers_names(strip_wrappers(weights))
    check_weights(state, expected_shapes(config), str(checkpoint))
    if lora is not None:
        adapter = read_torch_file(lora)
        adapter = adapter.get(LORA_KEY, adapter)
        rank = lora_rank if lora_rank is not None else _rank_of(adapter, str(lora))
        scale = (lora_alpha if lora_alpha is not None else rank) / rank
        state = merge_lora(state, lora_adapters(adapter, rank, str(lora)), scale, lora_targets(config), str(lora))
    return state, taken


def _rank_of(adapter: dict[str, torch.Tensor], source: str) -> int:
    for name, tensor in adapter.items():
        if ".lora_A" in name:
            return tensor.shape[0]
    raise ValueError(f"{source} holds no LoRA weights (no …lora_A… names)")


def write_transformer_folder(out: str | Path, state: dict[str, torch.Tensor], config: dict, provenance: dict) -> Path:
    """A diffusers ``WanTransformer3DModel`` folder (config.json + safetensors) and its provenance."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    empty_transformer(config).save_config(out)
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(out / WEIGHTS_NAME))
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1) + "\n")
    return out


def read_config(path: str | Path) -> dict:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the transformer configuration {path} ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON object")
    return config


# ----------------------------------------------------------------------------- the command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="the project's .pt checkpoint (original Wan names)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="the preset it belongs to: its key, LoRA and Wan configuration")
    source.add_argument("--config", type=Path, help="a diffusers transformer config.json (any size)")
    parser.add_argument("--out", type=Path, required=True, help="the diffusers transformer folder to write")
    parser.add_argument("--key", default=None, help="which weights of the checkpoint (default: the preset's, "
                                                    "else generator_ema when present, else generator)")
    parser.add_argument("--lora", type=Path, default=None,
                        help="a PEFT LoRA .pt to merge (default: the preset's, fetched from the Hub)")


def preset_conversion_inputs(name: str, key: str | None, lora: Path | None):
    """What ``convert --preset NAME`` needs: (config, key, LoRA path, rank, alpha)."""
    preset = hub_preset(name)
    files = [TRANSFORMER_CONFIG] + ([preset.lora_file] if preset.lora and lora is None else [])
    paths = fetch(files, f"convert --preset {name}")
    lora_path = lora if lora is not None else paths.get(preset.lora_file)
    rank, alpha = (preset.lora.rank, preset.lora.alpha) if preset.lora else (None, None)
    return read_config(paths[TRANSFORMER_CONFIG]), key or preset.key, lora_path, rank, alpha


def main(args: argparse.Namespace) -> int:
    if args.preset is not None:
        config, key, lora, rank, alpha = preset_conversion_inputs(args.preset, args.key, args.lora)
    else:
        config, key, lora, rank, alpha = read_config(args.config), args.key, args.lora, None, None
    state, taken = convert_checkpoint(args.checkpoint, config, key, lora, rank, alpha)
    provenance = {"preset": args.preset, "checkpoint": str(args.checkpoint), "key": taken,
                  "lora": str(lora) if lora else None}
    out = write_transformer_folder(args.out, state, config, provenance)
    print(f"{len(state)} weights from {args.checkpoint}{f' [{taken}]' if taken else ''}"
          f"{' + LoRA ' + str(lora) if lora else ''} -> {out}")
    return 0
