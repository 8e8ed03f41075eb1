"""``python -m cascade placement [--preset NAME] [--table]``: a Hub preset's memory plan on 1, 2 and 4
GPUs of 24, 48 and 80 GB, computed by the code that places the parts (``cascade.model.placement``).

The parts' sizes are the real ones, with nothing downloaded: parameters counted on empty (meta)
modules of Wan2.1-T2V-1.3B's transformer, umT5-XXL's encoder and the Wan VAE in their published
configurations, at the dtype a GPU runs them in (bf16), and the K/V cache of the preset's own
video. ``--table`` prints the markdown table the README shows.
"""

from __future__ import annotations

import argparse

import torch

from .model.checkpoints import HUB_PRESETS, HubPreset
from .model.placement import GB, WORKING_MEMORY, MemoryPlan, Parts, place
from .model.presets import PREFERRED_PRESETS, WAN_1_3B

GPU_COUNTS = (1, 2, 4)
GPU_SIZES_GB = (24, 48, 80)
GPU_DTYPE = torch.bfloat16


def reference_parts(preset: HubPreset) -> Parts:
    """The preset's parts at full size in bf16, for its own video (its run defaults' blocks)."""
    from transformers import UMT5Config

    from .model.hub_models import parts_of
    from .model.wan import UMT5_XXL

    # the Wan VAE's published configuration is AutoencoderKLWan's default one
    return parts_of(preset, WAN_1_3B, UMT5Config(**UMT5_XXL), {}, GPU_DTYPE, preset.run_defaults.get("blocks", 1))


def plans(parts: Parts) -> list[tuple[int, int, MemoryPlan | str]]:
    """(GPUs, GB each, the plan or why there is none) for every machine of the table."""
    rows = []
    for gpus in GPU_COUNTS:
        for size in GPU_SIZES_GB:
            try:
                rows.append((gpus, size, place(parts, gpus, size * GB)))
            except ValueError as error:
                rows.append((gpus, size, str(error)))
    return rows


def table(preset: HubPreset, parts: Parts) -> str:
    blocks = preset.run_defaults.get("blocks", 1)
    lines = [
        f"`{preset.name}` in bf16, its video of {blocks} blocks at {preset.height}×{preset.width}: {parts.describe()}.",
        "",
        "| GPUs | backend | `cuda:0` holds | `cuda:1` holds (each further GPU alike) | text encoder on | `cuda:0` used |",
        "|---|---|---|---|---|---|",
    ]
    for gpus, size, plan in plans(parts):
        if isinstance(plan, str):
            lines.append(f"| {gpus} × {size} GB | does not fit: {plan} | | | | |")
            continue
        backend = f"pool of {plan.workers} workers" if plan.workers else "one GPU, batched"
        others = plan.describe("cuda:1") if gpus > 1 else "–"
        if plan.text_encoder_device == "cpu":
            text = f"CPU (`cuda:0` would need {(plan.used('cuda:0') + parts.text_encoder) / GB:.1f} GB)"
        else:
            text = "`cuda:0`"
        lines.append(f"| {gpus} × {size} GB | {backend} | {plan.describe('cuda:0')} | {others} | {text} | "
                     f"{plan.used('cuda:0') / GB:.1f} of {size} GB |")
    lines += ["", f"Each process's share includes {WORKING_MEMORY / GB:.1f} GB of working memory (activations, "
                  "the allocator's slack). GB: 10⁹ bytes. When loading, the GPU's size is the free memory measured "
                  "on `cuda:0` then."]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=list(HUB_PRESETS), default=PREFERRED_PRESETS[0],
                        help="the Hub preset (default: the one a GPU machine runs first)")
    parser.add_argument("--table", action="store_true", help="the markdown table of the README")


def main(args: argparse.Namespace) -> int:
    preset = HUB_PRESETS[args.preset]
    parts = reference_parts(preset)
    if args.table:
        print(table(preset, parts), end="")
        return 0
    for gpus, size, plan in plans(parts):
        print(f"{gpus} × {size} GB:")
        if isinstance(plan, str):
            print(f"  does not fit: {plan}")
            continue
        for index in range(gpus):
            print(f"  cuda:{index}: {plan.describe(f'cuda:{index}')}")
        print(f"  text encoder on {plan.text_encoder_device}")
    return 0
