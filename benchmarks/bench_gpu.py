"""Serial against Block Cascading on one GPU, at the full size of Wan2.1-1.3B (random weights).

    python -m benchmarks.bench_gpu --json benchmarks/results/bench_gpu.json [--model random-wan2.1-1.3b]
                                   [--device cuda] [--dtype bfloat16] [--blocks 7] [--repeats 3] [--quick]

480×832 video = latent 16×60×104 per frame, 3 latent frames per block, 4 steps, bf16 (the preset's
dtype). Every variant runs once untimed, then ``--repeats`` times; the run of median latency is
reported. Latency is denoising only (the end of the last forward; text encoding and decoding are
left out). FPS is counted as the Block Cascading paper counts it: a block of 3 latent frames is
12 video frames (the VAE's temporal stride is 4), ``fps_paper = 12 * blocks / latency``;
``block_fps`` is the steady-state rate (the time to fill the pipeline left out).

One variant failing (out of memory, say) is recorded as an error and the others still run; the
JSON and its markdown table (same path, ``.md``) are rewritten after every variant, so a killed
run keeps what it measured. ``--quick`` is a CPU smoke run: ``random-tiny``, 2 blocks, 1 repeat.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
from pathlib import Path

import torch

from cascade import metrics
from cascade.backend import LocalExecutor
from cascade.model.presets import load_model
from cascade.pipeline import BlockCausalPipeline
from cascade.schedule import ideal_speedup, make_schedule

PROMPT = "a red circle moving right"
VIDEO_FRAMES_PER_BLOCK = 12  # 3 latent frames, VAE temporal stride 4
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def variants() -> list[dict]:
    """Serial (window 1) first, the reference of every speedup; then stride-1 cascades."""
    rows = [dict(name="serial", window=1, stride=None, recache=True, batched=False),
            dict(name="serial, no recache", window=1, stride=None, recache=False, batched=False)]
    for window in (2, 3, 5):
        for recache in (True, False):
            rows.append(dict(name=f"cascade W{window} s1{'' if recache else ', no recache'}",
                             window=window, stride=1, recache=recache, batched=True))
    return rows


def reset_peak_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def measure(model, variant: dict, blocks: int, device: torch.device, repeats: int) -> dict:
    """One warm-up run and ``repeats`` timed runs of one variant; figures of the median run."""
    steps = model.sampler.num_steps
    schedule = make_schedule(blocks, steps, window=variant["window"], stride=variant["stride"],
                             recache=variant["recache"])
    executor = LocalExecutor(device, batched=variant["batched"])
    pipeline = BlockCausalPipeline(model)
    reset_peak_memory(device)
    pipeline(PROMPT, schedule, executor, seed=0)
    runs = []
    for repeat in range(repeats):
        out = pipeline(PROMPT, schedule, executor, seed=0)
        runs.append(metrics.run_timing(out.timeline, VIDEO_FRAMES_PER_BLOCK, blocks))
        print(f"  {variant['name']}: run {repeat + 1}/{repeats} {runs[-1]['latency_s']:.3f} s", flush=True)
    latencies = [r["latency_s"] for r in runs]
    median = sorted(runs, key=lambda r: r["latency_s"])[(len(runs) - 1) // 2]
    return {
        "schedule": schedule, "latencies_s": latencies, "latency_s": median["latency_s"],
        "fps_paper": median["fps"], "block_fps": median["block_fps"],
        "time_to_first_block_s": median["time_to_first_block_s"], "forwards": median["forwards"],
        "ticks": schedule.num_ticks, "max_parallel": schedule.max_parallel, "model_calls": out.model_calls,
        "peak_memory_gib": peak_memory_gib(device),
    }


def run(args: argparse.Namespace, report: dict, save) -> None:
    """Measure every variant into ``report["variants"]``, saving after each one."""
    device = torch.device(args.device)
    model = load_model(args.model, device=device, dtype=DTYPES.get(args.dtype))
    lay = model.layout
    report.update(
        model=model.name, random_weights=model.random_weights, blocks=args.blocks, steps=model.sampler.num_steps,
        latent_frame=[lay.channels, lay.height, lay.width], latent_frames_per_block=lay.frames_per_block,
        dtype=str(next(model.transformer.parameters()).dtype).removeprefix("torch."),
    )
    serial = None
    for variant in variants():
        print(f"{variant['name']}: warm-up and {args.repeats} timed run(s)", flush=True)
        row = {k: variant[k] for k in ("name", "window", "stride", "recache")}
        row["executor"] = "batched" if variant["batched"] else "local"
        try:
            figures = measure(model, variant, args.blocks, device, args.repeats)
        except Exception as error:  # one failing variant (out of memory, say) must not end the run
            row["error"] = f"{type(error).__name__}: {error}"
            print(f"{variant['name']}: FAILED {row['error']}", flush=True)
        else:
            schedule = figures.pop("schedule")
            if variant["name"] == "serial":
                serial = (schedule, figures["latency_s"])
            if serial is not None:
                figures["ideal_speedup"] = ideal_speedup(serial[0], schedule)
                figures["speedup_vs_serial"] = serial[1] / figures["latency_s"]
            row.update(figures)
            print(f"{variant['name']}: {row['latency_s']:.3f} s, {row['fps_paper']:.1f} FPS", flush=True)
        report["variants"].append(row)
        save(report)


def _num(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    lines = [
        "## Serial vs Block Cascading on one GPU (`python -m benchmarks.bench_gpu`)",
        "",
        f"`{report.get('model')}`{' (RANDOM weights: timing only)' if report.get('random_weights') else ''}, "
        f"{report.get('blocks')} blocks of {report.get('latent_frames_per_block')} latent frames "
        f"{'×'.join(map(str, report.get('latent_frame', [])))}, {report.get('steps')} steps, {report.get('dtype')}, "
        f"{report['device_name']}, torch {report['torch']}{' (quick run)' if report['quick'] else ''}. "
        f"Median of {report['repeats']} run(s) after a warm-up; latency is denoising only; "
        f"FPS as the paper counts it (12 video frames per block).",
        "",
        "| variant | executor | ticks | ideal × | latency s | × vs serial | FPS (paper) | steady block FPS | first block s | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["variants"]:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['executor']} | error: {r['error'][:120]} |" + " |" * 7)
            continue
        lines.append(
            f"| {r['name']} | {r['executor']} | {r['ticks']} | {_num(r.get('ideal_speedup'), '.2f')} | "
            f"{r['latency_s']:.3f} | {_num(r.get('speedup_vs_serial'), '.2f')} | {r['fps_paper']:.1f} | "
            f"{_num(r['block_fps'], '.1f')} | {r['time_to_first_block_s']:.3f} | {_num(r['peak_memory_gib'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, type=Path, help="results; the table goes next to it (.md)")
    parser.add_argument("--model", default="random-wan2.1-1.3b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: the preset's (bf16 for Wan)")
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: random-tiny, 2 blocks, 1 repeat")
    args = parser.parse_args(argv)
    if args.blocks < 1 or args.repeats < 1:
        parser.error("--blocks and --repeats must be at least 1")
    if args.quick:
        args.model, args.device, args.blocks, args.repeats = "random-tiny", "cpu", 2, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device} was asked for, but CUDA is not available to torch {torch.__version__} "
                 f"here (torch.version.cuda = {torch.version.cuda}); use --device cpu or --quick")
    report = {
        "device": str(device), "quick": args.quick, "repeats": args.repeats, "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "prompt": PROMPT, "seed": 0, "video_frames_per_block": VIDEO_FRAMES_PER_BLOCK, "variants": [],
    }
    table = args.json.with_suffix(".md")

    def save(report: dict) -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics.json_safe(report), indent=1) + "\n")
        table.write_text(markdown(report))

    run(args, report, save)
    save(report)
    print(table.read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
