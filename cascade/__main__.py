"""Command line: ``python -m cascade generate|train|eval ...`` (see ``--help`` of each)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True, help="what the video shows")
    parser.add_argument("--model", default=None, help="model name (default: the bundled tiny-shapes)")
    parser.add_argument("--blocks", type=int, default=8, help="video length in blocks of 3 latent frames")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per block (default: the model's)")
    parser.add_argument("--window", type=int, default=4, help="cascade: blocks in flight at once")
    parser.add_argument("--stride", type=int, default=2,
                        help="cascade: steps a block runs before the next starts (2 keeps serial quality; "
                             "1 is fastest, see BENCHMARKS.md)")
    parser.add_argument("--no-recache", action="store_true", help="skip the clean K/V rewrite after each block")
    parser.add_argument("--joint", action="store_true",
                        help="cascade: denoise the blocks in flight in one forward, attending to each other")
    parser.add_argument("--executor", choices=("local", "batched", "distributed"), default="local",
                        help="local: one item at a time; batched: a tick's items in one forward; "
                             "distributed: a pool of worker processes, block b on worker b mod W")
    parser.add_argument("--workers", type=int, default=2, help="distributed: worker processes (devices)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--bwcache", action="store_true", help="reuse transformer-block features across steps")
    parser.add_argument("--bwcache-threshold", type=float, default=0.15, help="BWCache: reuse below this change")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, type=Path, help="output folder")


def _progress(fraction: float, message: str) -> None:
    print(f"\r{fraction:6.1%} {message}", end="", file=sys.stderr, flush=True)
    if fraction >= 1:
        print(file=sys.stderr)


def _request(args: argparse.Namespace, mode: str):
    from .service import GenerateRequest

    return GenerateRequest(
        prompt=args.prompt, mode=mode, model=args.model, blocks=args.blocks, steps=args.steps,
        window=args.window, stride=args.stride, recache=not args.no_recache, joint=args.joint,
        executor=args.executor, workers=args.workers, seed=args.seed, threads=args.threads,
        bwcache=args.bwcache, bwcache_threshold=args.bwcache_threshold,
    )


def _summary(stats: dict) -> str:
    return (f"{stats['mode']}: {stats['frames']} frames in {stats['latency_s']:.2f} s ({stats['fps']:.1f} FPS), "
            f"{stats['ticks']} ticks, {stats['forwards']} forwards on {stats['workers']} worker(s)")


def cmd_generate(args: argparse.Namespace) -> int:
    from .service import generate
    from .video import write_mp4

    result = generate(_request(args, args.mode), progress=_progress)
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "frames.npy", result.frames)
    write_mp4(result.frames, args.out / "video.mp4", fps=8, scale=4)
    (args.out / "stats.json").write_text(json.dumps(result.stats, indent=1) + "\n")
    if result.stats["random_weights"]:
        print(f"note: {result.stats['model']} has random weights: it makes noise, not video", file=sys.stderr)
    if result.unknown_words:
        print(f"words the model does not know (ignored): {', '.join(result.unknown_words)}", file=sys.stderr)
    print(f"{_summary(result.stats)} -> {args.out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .service import compare
    from .video import write_mp4, write_side_by_side

    result = compare(_request(args, "cascade"), progress=_progress)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name, run in (("serial", result.serial), ("cascade", result.cascade)):
        np.save(out / f"frames_{name}.npy", run.frames)
        write_mp4(run.frames, out / f"{name}.mp4", fps=8, scale=4)
    labels = (f"serial {result.stats['serial']['latency_s']:.2f}s",
              f"cascade {result.stats['cascade']['latency_s']:.2f}s")
    write_side_by_side(result.serial.frames, result.cascade.frames, labels, out / "side_by_side.mp4", fps=8, scale=4)
    (out / "stats.json").write_text(json.dumps(result.stats, indent=1) + "\n")
    s = result.stats
    print(_summary(s["serial"]))
    print(_summary(s["cascade"]))
    q = s["quality"]
    print(f"speedup {s['speedup']:.2f}x (ideal {s['ideal_speedup']:.2f}x); cascade vs serial "
          f"PSNR {float(q['psnr_db']):.1f} dB, SSIM {q['ssim']:.3f} -> {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cascade", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="generate one video")
    _add_run_options(generate)
    generate.add_argument("--mode", choices=("serial", "cascade"), default="serial")
    generate.set_defaults(run=cmd_generate)
    comparison = commands.add_parser("compare", help="the same prompt and seed, serial and cascaded")
    _add_run_options(comparison)
    comparison.set_defaults(run=cmd_compare)
    from . import bench
    from .toy import evaluate, train as trainer

    benchmark = commands.add_parser("bench", help="serial vs cascade timings, machine bounds and quality")
    bench.add_arguments(benchmark)
    benchmark.set_defaults(run=bench.main)

    train = commands.add_parser("train", help="train the bundled tiny-shapes model (resumable)")
    trainer.add_arguments(train)
    train.set_defaults(run=trainer.main)
    quality = commands.add_parser("eval", help="generate held-out prompts and score them with the analyzer")
    evaluate.add_arguments(quality)
    quality.set_defaults(run=evaluate.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
