"""BWCache beside diffusers' own caches on block-causal video: time, compute and quality.

    python -m benchmarks.bench_cache [--quick] [--model NAME] [--out DIR]

Same model, prompts and seeds for every method: no cache, BWCache (``cascade.caching``),
diffusers' FirstBlockCache and diffusers' TaylorSeer (on whole transformer blocks), at 4, 8 and
16 steps, serial and cascaded. Writes ``DIR/bench_cache.json`` and ``DIR/bench_cache.md``.

**diffusers' caches under block-causal generation.** They keep one state per cache context and
assume the forwards under it are the consecutive steps of one denoising loop. Here each video
block has its own loop, and a cascade interleaves them; left alone, FirstBlockCache would compare
block b's first-block residual with block b−1's and reuse b−1's tail residual. So every forward
runs under ``transformer.cache_context("<request>/<video block>")`` — one diffusers state per video
block, exactly what BWCache keeps. A recache forward gets a context of its own, so it starts
fresh and is computed, as BWCache always computes it. A context is chosen per forward, not per
row, so diffusers' caches run one item per forward (the local executor); only the uncached model
and BWCache also run the cascade batched (``cascade-batched``), the fast way to cascade on one
device, which gives the figure "cascade + BWCache against plain serial".

TaylorSeer is pointed at whole transformer blocks (``blocks.N``): its default patterns
(``^blocks.*attn``) match no module of Wan's blocks, whose attentions are ``attn1``/``attn2``.
MagCache is left out: it needs magnitude ratios calibrated per model and per step count.

Transformer-block computations are counted by a hook inside every cache's hooks (so a skipped or
predicted block is not counted), in rows: a batched forward of 3 rows counts 3 per block.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, ModelHook, TaylorSeerCacheConfig

from cascade import metrics
from cascade.backend import LocalExecutor
from cascade.caching import BWCacheConfig, apply_bw_cache, bw_cache_stats, remove_bw_cache
from cascade.model.presets import default_model_name, load_model
from cascade.pipeline import BlockCausalPipeline
from cascade.schedule import make_schedule
from cascade.service import GenerateRequest
from cascade.toy.analyzer import ACCURACY_KEYS, analyze_clip, score_clip
from cascade.toy.data import eval_set, parse_prompt

_COUNT_HOOK = "bench_count_block_runs"
_CONTEXT_HOOK = "bench_video_block_context"
REQUEST = "run"  # BlockCausalPipeline's request id


class CountBlockRuns(ModelHook):
    """Counts the rows a transformer block really computes (registered before any cache's hook)."""

    def __init__(self, tally: list[int]):
        super().__init__()
        self.tally = tally

    def pre_forward(self, module, *args, **kwargs):
        self.tally[0] += args[0].shape[0]
        return args, kwargs


class VideoBlockContext(ModelHook):
    """Runs every forward under a diffusers cache context of its own video block (see the module doc)."""

    def new_forward(self, module, *args, **kwargs):
        keys = kwargs.get("row_keys")
        if keys is None or len(keys) != 1:
            raise ValueError("diffusers' caches keep one state per forward: run them one item per forward")
        request, block, step = keys[0]
        name = f"{request}/{block}" if isinstance(step, int) else f"{request}/{block}/{step}"
        with module.cache_context(name):
            return self.fn_ref.original_forward(*args, **kwargs)


@dataclass(frozen=True)
class Method:
    """A cache as the benchmark runs it: install before a run, remove after; fresh state every run."""

    name: str
    install: Callable[[torch.nn.Module, int], None]
    remove: Callable[[torch.nn.Module], None]
    batched: bool = False  # may run rows of different video blocks in one forward
    stats: Callable[[torch.nn.Module], dict] | None = None  # the cache's own account of a run


def no_cache() -> Method:
    return Method("none", lambda transformer, steps: None, lambda transformer: None, batched=True)


def bw_cache(threshold: float) -> Method:
    return Method(f"bwcache δ={threshold:g}",
                  lambda transformer, steps: apply_bw_cache(transformer, BWCacheConfig(steps, threshold=threshold)),
                  remove_bw_cache, batched=True, stats=lambda transformer: bw_cache_stats(transformer, REQUEST))


def diffusers_cache(name: str, config_for_steps: Callable[[int], object]) -> Method:
    def install(transformer, steps):
        HookRegistry.check_if_exists_or_initialize(transformer).register_hook(VideoBlockContext(), _CONTEXT_HOOK)
        transformer.enable_cache(config_for_steps(steps))

    def remove(transformer):
        transformer.disable_cache()
        HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(_CONTEXT_HOOK, recurse=False)

    return Method(name, install, remove)


def first_block_cache(threshold: float) -> Method:
    return diffusers_cache(f"fbcache {threshold:g}", lambda steps: FirstBlockCacheConfig(threshold=threshold))


def taylorseer() -> Method:
    """Taylor-predicted block outputs (order 1) every other step after two computed ones, last step
    computed: about the compute pattern BWCache has when its indicator always fires."""
    return diffusers_cache("taylorseer", lambda steps: TaylorSeerCacheConfig(
        cache_interval=2, disable_cache_before_step=2, disable_cache_after_step=steps - 1, max_order=1,
        taylor_factors_dtype=torch.float32, cache_identifiers=[r"blocks\.\d+"]))


MODES = {
    # mode: (window, stride, batched executor); cascades as the CLI and the app run them by default
    "serial": (1, None, False),
    "cascade": (GenerateRequest.window, GenerateRequest.stride, False),
    "cascade-batched": (GenerateRequest.window, GenerateRequest.stride, True),
}


def run_once(model, method: Method, mode: str, steps: int, blocks: int, prompt: str, seed: int, threads: int):
    window, stride, batched = MODES[mode]
    schedule = make_schedule(blocks, steps, window=window, stride=stride)
    transformer = model.transformer
    tally = [0]
    for block in transformer.blocks:
        HookRegistry.check_if_exists_or_initialize(block).register_hook(CountBlockRuns(tally), _COUNT_HOOK)
    method.install(transformer, steps)
    try:
        executor = LocalExecutor(batched=batched, threads=threads)
        output = BlockCausalPipeline(model)(prompt, schedule, executor, seed=seed)
        cache_stats = method.stats(transformer) if method.stats else None
    finally:
        method.remove(transformer)
        HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(_COUNT_HOOK, recurse=True)
    timing = metrics.run_timing(output.timeline, output.frames.shape[0] // blocks, blocks)
    return output.frames, {
        "latency_s": timing["latency_s"],
        "block_runs": tally[0],
        "block_slots": schedule.num_items * len(transformer.blocks),
        "bwcache": cache_stats,
    }


def clip_score(frames: np.ndarray, prompt: str) -> float:
    """The analyzer's accuracy on the attributes the prompt names, in percent."""
    scores = score_clip(analyze_clip(frames), parse_prompt(prompt))
    named = [scores[k] for k in ACCURACY_KEYS if scores[k] is not None]
    return 100.0 * float(np.mean(named)) if named else math.nan


def summarise(runs: list[dict]) -> dict:
    """Mean over prompts of one (steps, mode, method) cell."""
    block_runs = sum(r["block_runs"] for r in runs)
    slots = sum(r["block_slots"] for r in runs)
    cell = {
        "latency_s": sum(r["latency_s"] for r in runs),
        "block_runs": block_runs,
        "block_slots": slots,
        "blocks_skipped": 1 - block_runs / slots,
        "compute_reduction": slots / block_runs,
        "psnr": _pooled_psnr([r["psnr"] for r in runs]),
        "ssim": float(np.mean([r["ssim"] for r in runs])),
        "psnr_vs_serial": _pooled_psnr([r["psnr_vs_serial"] for r in runs]),
        "score": float(np.nanmean([r["score"] for r in runs])),
    }
    stats = [r["bwcache"] for r in runs if r["bwcache"] is not None]
    if stats:
        forwards = sum(s["forwards"] for s in stats)
        cell["reuse_rate"] = sum(s["reused"] for s in stats) / forwards
        cell["mixed_forwards"] = sum(s["mixed_forwards"] for s in stats)
        by_step: dict[int, list[float]] = {}
        for s in stats:
            for _, step, value in s["indicator"]:
                by_step.setdefault(step, []).append(value)
        cell["indicator_by_step"] = {step: float(np.mean(v)) for step, v in sorted(by_step.items())}
    return cell


def _pooled_psnr(values: list[float]) -> float:
    """PSNR of the mean MSE of equally sized clips: an identical clip (inf dB) counts as zero error
    instead of being dropped or making the mean infinite."""
    mse = np.mean([255.0**2 / 10 ** (v / 10) for v in values])
    return math.inf if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def run_bench(args) -> dict:
    model = load_model(args.model)
    prompts = eval_set(args.prompts)
    methods = ([no_cache()] + [bw_cache(t) for t in args.bwcache_thresholds]
               + [first_block_cache(t) for t in args.fbc_thresholds] + [taylorseer()])
    cells = []
    for steps in args.steps:
        reference: dict[tuple[str, int], np.ndarray] = {}
        runs: dict[tuple[str, str], list[dict]] = {}
        for mode, method, (index, item) in itertools.product(MODES, methods, enumerate(prompts)):
            if MODES[mode][2] and not method.batched:
                continue
            frames, run = run_once(model, method, mode, steps, args.blocks, item.prompt, item.seed, args.threads)
            if method.name == "none":
                reference[(mode, index)] = frames
            run["psnr"] = metrics.psnr(frames, reference[(mode, index)])
            run["ssim"] = metrics.ssim(frames, reference[(mode, index)])
            run["psnr_vs_serial"] = metrics.psnr(frames, reference[("serial", index)])
            run["score"] = clip_score(frames, item.prompt)
            runs.setdefault((mode, method.name), []).append(run)
            print(f"{steps:>2} steps {mode:<15} {method.name:<16} prompt {index}: {run['latency_s']:.2f} s, "
                  f"{run['block_runs']}/{run['block_slots']} block runs, PSNR {run['psnr']:.1f}", file=sys.stderr)
        uncached = {mode: sum(r["latency_s"] for r in runs[(mode, "none")]) for mode in MODES}
        for (mode, name), cell_runs in runs.items():
            cell = summarise(cell_runs)
            cell["speedup"] = uncached[mode] / cell["latency_s"]
            cell["speedup_vs_serial"] = uncached["serial"] / cell["latency_s"]
            cells.append({"steps": steps, "mode": mode, "method": name, **cell})
    return {
        "model": model.name,
        "random_weights": model.random_weights,
        "prompts": [item.prompt for item in prompts],
        "blocks": args.blocks,
        "threads": args.threads,
        "cascade": {"window": MODES["cascade"][0], "stride": MODES["cascade"][1], "recache": True},
        "cells": cells,
    }


def markdown(result: dict) -> str:
    weights = "random weights: quality figures compare noise with noise" if result["random_weights"] else "trained"
    lines = [
        f"Model `{result['model']}` ({weights}); {len(result['prompts'])} prompts × {result['blocks']} video blocks, "
        f"recache on, cascade window {result['cascade']['window']} stride {result['cascade']['stride']}, "
        f"{result['threads']} torch thread(s). Time: denoising only, summed over prompts. Quality against the "
        "uncached run of the same mode; \"vs serial\" against the uncached serial run. Block runs: transformer "
        "blocks computed (rows) out of all. diffusers' caches run one item per forward, each under a cache "
        "context of its own video block (see the script's docstring); BWCache keys its state by row.",
        "",
        "| steps | mode | method | time s | speedup | vs serial | block runs | skipped | reuse | PSNR dB | SSIM "
        "| PSNR vs serial | score % |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result["cells"]:
        reuse = f"{c['reuse_rate']:.0%}" if "reuse_rate" in c else ""
        lines.append(
            f"| {c['steps']} | {c['mode']} | {c['method']} | {c['latency_s']:.2f} | {c['speedup']:.2f}× "
            f"| {c['speedup_vs_serial']:.2f}× | {c['block_runs']}/{c['block_slots']} | {c['blocks_skipped']:.0%} "
            f"| {reuse} | {c['psnr']:.1f} | {c['ssim']:.3f} | {c['psnr_vs_serial']:.1f} | {c['score']:.0f} |")
    lines += ["", "BWCache's indicator ι (relative L1 change of block outputs since the last computed step), mean "
              "over video blocks and prompts, by step, serial runs; reuse needs ι < δ:", ""]
    for c in result["cells"]:
        if c["mode"] == "serial" and "indicator_by_step" in c:
            values = " ".join(f"{step}:{value:.3f}" for step, value in c["indicator_by_step"].items())
            lines.append(f"- {c['steps']} steps, {c['method']}: {values}")
    batched = [c for c in result["cells"] if c["mode"] == "cascade-batched" and "mixed_forwards" in c]
    lines += ["", "Batched forwards whose rows took different decisions (only those rows computed): "
              + ", ".join(f"{c['steps']} steps {c['method']}: {c['mixed_forwards']}" for c in batched)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: tiny-shapes if its weights exist, else random-tiny")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--prompts", type=int, default=2, help="prompts from the toy evaluation set")
    parser.add_argument("--blocks", type=int, default=3, help="video blocks per clip")
    parser.add_argument("--bwcache-thresholds", type=float, nargs="+", default=[0.15, 0.3, 0.45])
    parser.add_argument("--fbc-thresholds", type=float, nargs="+", default=[0.05, 0.2, 0.4])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (tiny forwards: 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 prompt, 2 blocks, 4 and 16 steps, the largest threshold of each cache")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.blocks, args.steps = 1, 2, [4, 16]
        args.bwcache_thresholds, args.fbc_thresholds = args.bwcache_thresholds[-1:], args.fbc_thresholds[-1:]
    args.model = args.model or default_model_name()
    started = time.perf_counter()
    result = run_bench(args)
    result["bench_wall_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_cache.json").write_text(json.dumps(metrics.json_safe(result), indent=1) + "\n")
    table = markdown(result)
    (args.out / "bench_cache.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
