"""Command line: ``python -m cascade generate|compare|bench|eval|train|convert|env|download|placement ...`` (see ``--help`` of each).

Each command is a thin caller of ``cascade.service.Service``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    from .service import EXECUTORS, PLACEMENTS, GenerateRequest as R

    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="what the video shows")
    what.add_argument("--prompt-schedule", metavar="SCHEDULE",
                      help="prompts switching at blocks, used instead of --prompt: "
                           "'0:a red circle moving right;4:a blue circle moving right'")
    parser.add_argument("--model", default=R.model, help="model name (default: the bundled tiny-shapes)")
    parser.add_argument("--blocks", type=int, default=R.blocks,
                        help="video length in blocks of 3 latent frames (default: the model's; 8 for tiny-shapes)")
    parser.add_argument("--steps", type=int, default=R.steps, help="denoising steps per block (default: the model's)")
    parser.add_argument("--window", type=int, default=R.window,
                        help="cascade: blocks in flight at once (default: planned for the backend and the steps; "
                             "the stats say which plan ran and why)")
    parser.add_argument("--stride", type=int, default=R.stride,
                        help="cascade: steps a block runs before the next starts (default: planned, as --window; "
                             "1 is fastest, see BENCHMARKS.md)")
    parser.add_argument("--no-recache", dest="recache", action="store_const", const=False, default=R.recache,
                        help="skip the clean K/V rewrite after each block (default: planned)")
    parser.add_argument("--joint", action="store_const", const=True, default=R.joint,
                        help="cascade: denoise the blocks in flight in one forward, attending to each other")
    parser.add_argument("--executor", choices=EXECUTORS, default=R.executor,
                        help="local: one item at a time; batched: a tick's items in one forward; "
                             "distributed: a pool of worker processes, block b on worker b mod W (see --placement)")
    parser.add_argument("--workers", type=int, default=R.workers, help="distributed: worker processes (devices)")
    parser.add_argument("--placement", choices=PLACEMENTS, default=R.placement,
                        help="distributed: blocks (block b on worker b mod W, Block Cascading's) or tokens (every "
                             "worker runs every item on its share of the tokens: sequence parallelism); default: "
                             "blocks, or tokens for a run whose ticks are one forward of several blocks (--joint, "
                             "a serial run's switch pass), which only tokens runs")
    parser.add_argument("--threads", type=int, default=R.threads, help="torch intra-op threads (per worker)")
    parser.add_argument("--bwcache", action="store_true", help="reuse transformer-block features across steps")
    parser.add_argument("--bwcache-threshold", type=float, default=R.bwcache_threshold,
                        help="BWCache: reuse below this change")
    parser.add_argument("--seed", type=int, default=R.seed)
    parser.add_argument("--out", required=True, type=Path, help="output folder")


class ProgressLine:
    """A run's progress on one line of stderr, rewritten in place. ``end()`` finishes a line that
    a failed or interrupted run left open, so that the error after it has a line of its own."""

    def __init__(self):
        self.open = False

    def __call__(self, fraction: float, message: str) -> None:
        print(f"\r{fraction:6.1%} {message}", end="", file=sys.stderr, flush=True)
        self.open = fraction < 1
        if not self.open:
            print(file=sys.stderr)

    def end(self) -> None:
        if self.open:
            print(file=sys.stderr)
            self.open = False


def _request(args: argparse.Namespace, mode: str):
    from .service import GenerateRequest, parse_prompt_schedule

    schedule = parse_prompt_schedule(args.prompt_schedule) if args.prompt_schedule is not None else None
    return GenerateRequest(
        prompt=args.prompt or "", prompt_schedule=schedule, mode=mode, model=args.model, blocks=args.blocks, steps=args.steps,
        window=args.window, stride=args.stride, recache=args.recache, joint=args.joint,
        executor=args.executor, workers=args.workers, placement=args.placement, seed=args.seed, threads=args.threads,
        bwcache=args.bwcache, bwcache_threshold=args.bwcache_threshold,
    )


def _summary(stats: dict, name: str | None = None) -> str:
    return (f"{name or stats['mode']}: {stats['frames']} frames in {stats['latency_s']:.2f} s ({stats['fps']:.1f} FPS), "
            f"{stats['ticks']} ticks, {stats['forwards']} forwards on {stats['workers']} worker(s)")


def _notes(stats: dict) -> None:
    if stats["random_weights"]:
        print(f"note: {stats['model']} has random weights: it makes noise, not video", file=sys.stderr)
    if stats["unknown_words"]:
        print(f"words the model does not know (ignored): {', '.join(stats['unknown_words'])}", file=sys.stderr)


def cmd_generate(args: argparse.Namespace) -> int:
    from .service import UNLIMITED, Service

    with Service(limits=UNLIMITED) as service:  # the command line: the machine is its user's
        result = service.generate(_request(args, args.mode), progress=args.progress, folder=args.out)
    _notes(result.stats)
    print(f"{_summary(result.stats)} -> {args.out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .service import UNLIMITED, Service

    request = replace(_request(args, "cascade"), runs=tuple(args.runs.split(",")))
    with Service(limits=UNLIMITED) as service:
        service.warm_up(request)  # nothing timed below pays for loading or starting; bad values fail here
        result = service.compare(request, progress=args.progress, folder=args.out)
    s = result.stats
    _notes(s["serial"])
    print(_summary(s["serial"]))
    print(_summary(s["cascade"]))
    q = s["quality"]
    print(f"speedup {s['speedup']:.2f}x (ideal {s['ideal_speedup']:.2f}x; {s['counted_as']}); cascade vs serial "
          f"PSNR {float(q['psnr_db']):.1f} dB, SSIM {q['ssim']:.3f} -> {args.out}")
    if "sequence" in s:
        plan = s["sequence_plan"]
        print(f"{_summary(s['sequence'], 'sequence')}; speedup {s['sequence_speedup']:.2f}x (ideal {plan['bound']:.2f}x, "
              f"{plan['bound_with_communication']:.2f}x with its {plan['mean_communication_s']:.2f} s of communication "
              f"per worker); "
              f"vs serial PSNR {float(q['sequence']['psnr_db']):.1f} dB")
    for serial, cascade in zip(s["serial"]["switches"], s["cascade"]["switches"]):
        print(f"switch at block {serial['block']}: serial {serial['latency_s']:.2f} s and {serial['forwards']} extra "
              f"forwards, cascade {cascade['latency_s']:.2f} s and {cascade['forwards']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    # argparse would name ``python -m cascade`` after its file, __main__.py; the console script keeps its own name
    invoked = Path(sys.argv[0]).name
    parser = argparse.ArgumentParser(prog="python -m cascade" if invoked == "__main__.py" else invoked,
                                     description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="generate one video")
    _add_run_options(generate)
    generate.add_argument("--mode", choices=("serial", "cascade"), default=None, help="default: the model's (serial)")
    generate.set_defaults(run=cmd_generate)
    comparison = commands.add_parser("compare", help="the same prompt and seed, serial and cascaded")
    _add_run_options(comparison)
    comparison.add_argument("--runs", default="serial,cascade",
                            help="serial,cascade or serial,cascade,sequence: the third run is the serial schedule "
                                 "with every forward split over the pool's workers (--executor distributed)")
    comparison.set_defaults(run=cmd_compare)
    from . import bench, evaluate
    from .toy import train as trainer

    benchmark = commands.add_parser("bench", help="serial vs cascade timings, machine bounds and quality")
    bench.add_arguments(benchmark)
    benchmark.set_defaults(run=bench.main)

    train = commands.add_parser("train", help="train the bundled tiny-shapes model (resumable)")
    trainer.add_arguments(train)
    train.set_defaults(run=trainer.main)
    quality = commands.add_parser("eval", help="generate held-out prompts and score them with the analyzer")
    evaluate.add_arguments(quality)
    quality.set_defaults(run=evaluate.main)
    from .model import convert

    conversion = commands.add_parser("convert", help="an original Wan checkpoint -> a diffusers transformer folder")
    convert.add_arguments(conversion)
    conversion.set_defaults(run=convert.main)
    from . import env

    environment = commands.add_parser("env", help="this machine, the libraries, every model's status and what "
                                                  "`python app.py` would run (offline; for bug reports)")
    environment.set_defaults(run=env.main)
    from . import download, placement_table

    fetching = commands.add_parser("download", help="fetch a Hub preset's files into the Hugging Face cache ahead "
                                                    "of time (resumable)")
    download.add_arguments(fetching)
    fetching.set_defaults(run=download.main)
    placing = commands.add_parser("placement", help="what each GPU holds for a Hub preset on 1, 2 and 4 GPUs "
                                                    "(the memory plan)")
    placement_table.add_arguments(placing)
    placing.set_defaults(run=placement_table.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs a command; every failure a person can act on ends as one ``error:`` line on stderr."""
    args = build_parser().parse_args(argv)
    args.progress = ProgressLine()
    try:
        return args.run(args)
    except ValueError as error:  # bad input, found before any work
        return _fail(args, str(error), 2)
    except RuntimeError as error:  # a run that failed (a worker died or hung): the rest is detail
        from .service import first_line

        return _fail(args, first_line(error), 1)
    except KeyboardInterrupt:  # Ctrl-C: the Service stopped its workers on the way out
        return _fail(args, "interrupted", 130)


def _fail(args: argparse.Namespace, line: str, code: int) -> int:
    args.progress.end()
    print(f"error: {line}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
