"""Measure what a model generates for held-out prompts: ``python -m cascade eval``.

Every held-out prompt/seed pair (``data.eval_set``) is generated through the service exactly as a
user would, judged by the analyzer against what its prompt asks for, and summarised with 95%
intervals. ``evaluate_switches`` does the same for held-out prompt schedules whose object
changes colour mid-video (``data.switch_eval_set``), scoring each prompt's stretch of the video.
It drives the Service over the tiny-shapes world (``cascade/toy/``), so it sits above both, as
the bench does; the toy world itself builds only on the model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from .metrics import judge_segments
from .service import UNLIMITED, GenerateRequest, Service
from .toy import data
from .toy.analyzer import aggregate, judge

SEGMENT_FIELDS = ("prompt", "blocks", "frames")  # what judge_segments adds to a verdict besides the scores


def evaluate(service: Service, request: GenerateRequest, prompts: int, seed: int = 0, progress=None) -> dict:
    """Generate the first ``prompts`` held-out items with ``request``'s settings and score them."""
    items = data.eval_set(prompts, seed)
    results = []
    started = time.perf_counter()
    for index, item in enumerate(items):
        run = service.generate(replace(request, prompt=item.prompt, seed=item.seed), files=False)
        scores = judge(run.frames, item.prompt)
        results.append({"prompt": item.prompt, "seed": item.seed, **scores, "latency_s": run.stats["latency_s"]})
        if progress is not None:
            progress(index + 1, len(items))
    scored = [{k: v for k, v in r.items() if k not in ("prompt", "seed", "latency_s")} for r in results]
    return {
        **_settings(run.stats, request),
        "prompts": len(items),
        "eval_seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
        "summary": aggregate(scored),
        "items": results,
    }


def evaluate_switches(service: Service, request: GenerateRequest, schedules: int, switch_block: int,
                      seed: int = 0, progress=None) -> dict:
    """Generate ``schedules`` held-out switch schedules (``data.switch_eval_set``) with
    ``request``'s settings and score the stretch before and after the switch against its own
    prompt (``metrics.judge_segments``: the block right after the switch is the transition and
    is left out). ``summary["after"]["colour"]`` is how often the new colour took over."""
    items = data.switch_eval_set(schedules, switch_block, seed)
    results = []
    started = time.perf_counter()
    for index, item in enumerate(items):
        run = service.generate(replace(request, prompt="", prompt_schedule=item.schedule, seed=item.seed), files=False)
        segments = judge_segments(judge, run.frames, run.stats["block_frames"], item.schedule)
        results.append({"schedule": [list(entry) for entry in item.schedule], "seed": item.seed, "segments": segments})
        if progress is not None:
            progress(index + 1, len(items))
    before, after = ([{k: v for k, v in r["segments"][i].items() if k not in SEGMENT_FIELDS} for r in results]
                     for i in (0, -1))
    return {
        **_settings(run.stats, request),
        "schedules": len(items),
        "switch_block": switch_block,
        "eval_seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
        "summary": {"before": aggregate(before), "after": aggregate(after)},
        "items": results,
    }


def _settings(stats: dict, request: GenerateRequest) -> dict:
    """The settings an evaluation ran with, as its last run reports them."""
    return {"model": stats["model"], "mode": request.mode,
            **{key: stats[key] for key in ("blocks", "steps", "window", "stride", "recache", "joint")},
            "bwcache": request.bwcache_delta}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("serial", "cascade"), default="serial")
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompts", type=int, default=96, help="held-out prompt/seed pairs to generate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out set")
    parser.add_argument("--blocks", type=int, default=GenerateRequest.blocks)
    parser.add_argument("--steps", type=int, default=GenerateRequest.steps)
    parser.add_argument("--window", type=int, default=GenerateRequest.window)
    parser.add_argument("--stride", type=int, default=GenerateRequest.stride)
    parser.add_argument("--no-recache", dest="recache", action="store_const", const=False, default=GenerateRequest.recache)
    parser.add_argument("--joint", action="store_const", const=True, default=GenerateRequest.joint)
    parser.add_argument("--executor", choices=("local", "batched"), default=GenerateRequest.executor,
                        help="batched: a tick's items in one forward (faster; the frames do not depend on it)")
    parser.add_argument("--bwcache", action="store_true", help="run with BWCache")
    parser.add_argument("--bwcache-threshold", type=float, default=GenerateRequest.bwcache_threshold)
    parser.add_argument("--json", required=True, type=Path, help="where to write the results")


def main(args: argparse.Namespace) -> int:
    request = GenerateRequest(prompt="-", mode=args.mode, model=args.model, blocks=args.blocks, steps=args.steps,
                              window=args.window, stride=args.stride, recache=args.recache, joint=args.joint,
                              executor=args.executor, bwcache=args.bwcache, bwcache_threshold=args.bwcache_threshold)

    def progress(done: int, total: int) -> None:
        print(f"\r{done}/{total} clips", end="" if done < total else "\n", file=sys.stderr, flush=True)

    with Service(limits=UNLIMITED) as service:  # the command line: the machine is its user's
        report = evaluate(service, request, args.prompts, args.seed, progress)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    summary = report["summary"]
    line = ", ".join(f"{k} {summary[k]['mean']:.1%}" for k in ("colour", "shape", "motion", "one_object") if k in summary)
    print(f"{report['model']} {report['mode']}: {line} over {report['prompts']} clips -> {args.json}")
    return 0
