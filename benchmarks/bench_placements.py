"""When each placement wins on this machine: serial on one core against a pool of one-core
workers running the same video with blocks across the workers (Block Cascading) and with every
forward's tokens split over them (sequence parallelism), as the frames grow.

    python -m benchmarks.bench_placements [--repeats 3] [--workers 2] [--out benchmarks/results]

The model is ``random-tiny`` (the bundled model's shapes, random weights: the frames are noise,
the work is the real work) at 64×64, 128×128 and 256×256 pixels, that is 64, 256 and 1024 tokens
per latent frame; every run has the same blocks and steps, so only the tokens per forward change.
The cascade is W2 s1 (one block in flight per worker, its bound the tick ratio). Each figure is the
median of ``--repeats`` runs after a warm-up run; the sequence run's latents are checked against
serial's (max |difference|; the cascade is another computation). Writes ``bench_placements.json``
and ``.md``. No timing is asserted anywhere: run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

from cascade.backend import LocalExecutor
from cascade.backend.pool import DistributedExecutor
from cascade.metrics import run_timing
from cascade.model.presets import PresetLoader, load_model
from cascade.pipeline import BlockCausalPipeline
from cascade.plan import PlanBackend, bound
from cascade.schedule import make_schedule

from .bench_app import machine, write_report

RESULTS = Path(__file__).parent / "results"
PROMPT = "a red circle moving right"
PIXELS = (64, 128, 256)
BLOCKS, STEPS = 4, 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_placements", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pixels", type=int, nargs="+", default=list(PIXELS), help="frame sides to run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def at_pixels(model, side: int):
    return dataclasses.replace(model, layout=dataclasses.replace(model.layout, height=side, width=side))


def timed(model, schedule, executor, repeats: int):
    """The median latency (``metrics.run_timing``'s, as the Service reports it) of ``repeats`` runs
    after a warm-up, and the last run."""
    run = BlockCausalPipeline(model)
    runs = [run(PROMPT, schedule, executor, seed=0) for _ in range(repeats + 1)][1:]
    latencies = [run_timing(r.timeline, r.block_frames[-1], schedule.num_blocks)["latency_s"] for r in runs]
    return statistics.median(latencies), runs[-1]


def row(model, side: int, pool, workers: int, repeats: int) -> dict:
    video = at_pixels(model, side)
    serial = make_schedule(BLOCKS, STEPS, window=1)
    cascade = make_schedule(BLOCKS, STEPS, window=workers, stride=1)
    serial_s, reference = timed(video, serial, LocalExecutor(threads=1), repeats)
    cascade_s, _ = timed(video, cascade, pool, repeats)
    tokens_s, tokens_run = timed(video, serial, pool.placed("tokens"), repeats)
    return {
        "pixels": side, "tokens_per_frame": video.transformer.tokens_per_frame(side, side),
        "serial_s": serial_s, "cascade_s": cascade_s, "sequence_s": tokens_s,
        "cascade_speedup": serial_s / cascade_s, "sequence_speedup": serial_s / tokens_s,
        "cascade_bound": bound(serial, cascade, PlanBackend("distributed", workers)),
        "sequence_bound": bound(serial, serial, PlanBackend("distributed", workers, placement="tokens")),
        "sequence_max_diff": (tokens_run.latents - reference.latents).abs().max().item(),
    }


def markdown(report: dict) -> str:
    lines = [
        f"## When each placement wins here (`python -m benchmarks.bench_placements`)", "",
        f"{report['machine']}. `random-tiny` ({BLOCKS} blocks, {STEPS} steps) at growing frame sizes: serial on one "
        f"core against a pool of {report['workers']} one-core workers, running Block Cascading (W{report['workers']} s1, "
        "blocks across the workers) and sequence parallelism (the serial schedule, each forward's tokens split over "
        f"the workers); medians of {report['repeats']} runs after a warm-up. Bounds assume free communication; "
        "max diff: the sequence run's latents against serial's (the cascade is another computation).", "",
        "| pixels | tokens / frame | serial s | cascade s | cascade × | bound | sequence s | sequence × | bound | max diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['pixels']}×{r['pixels']} | {r['tokens_per_frame']} | {r['serial_s']:.3f} | {r['cascade_s']:.3f} | "
                     f"**{r['cascade_speedup']:.2f}×** | {r['cascade_bound']:.2f} | {r['sequence_s']:.3f} | "
                     f"**{r['sequence_speedup']:.2f}×** | {r['sequence_bound']:.2f} | "
                     f"{r['sequence_max_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = load_model("random-tiny")
    with DistributedExecutor(PresetLoader("random-tiny"), workers=args.workers, threads_per_worker=1) as pool:
        rows = []
        for side in args.pixels:
            rows.append(row(model, side, pool, args.workers, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    report = {"machine": machine(), "workers": args.workers, "repeats": args.repeats, "rows": rows}
    write_report(args.out, "bench_placements", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
