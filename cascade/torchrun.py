"""Generate one video with every torchrun rank as one worker (``RankExecutor``), across machines too::

    torchrun --standalone --nproc_per_node=2 -m cascade.torchrun \\
        --model random-tiny --prompt "a red ball" --blocks 4 --steps 4 --window 2 --out out/

Across machines, run on every node (one rank per GPU; rank 0's node writes the result)::

    torchrun --nnodes=2 --node_rank=N --master_addr=HOST0 --master_port=29500 \\
        --nproc_per_node=GPUS -m cascade.torchrun --model NAME --prompt ... --out out/

It lives above the backend: it loads the model, runs the pipeline and writes files, which the
backend never does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import metrics
from .backend.rank import COLLECTIVE_TIMEOUT_S, KV_EXCHANGES, PLACEMENTS, RankExecutor
from .model.presets import load_model
from .pipeline import BlockCausalPipeline
from .service import GenerateRequest, run_stats
from .video import write_mp4


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node=W -m cascade.torchrun",
        description="Generate one video with every torchrun rank as one worker of the distributed executor.",
    )
    parser.add_argument("--model", default=None, help="model name (default: the bundled tiny-shapes)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--blocks", type=int, default=None, help="video length in blocks (default: the model's)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per block (default: the model's)")
    parser.add_argument("--window", type=int, default=1, help="blocks in flight at once (1: serial)")
    parser.add_argument("--stride", type=int, default=None, help="items a block runs before the next starts")
    parser.add_argument("--no-recache", dest="recache", action="store_const", const=False, default=None)
    parser.add_argument("--joint", action="store_const", const=True, default=None,
                        help="cascade: denoise the blocks in flight in one forward (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per rank (CPU)")
    parser.add_argument("--placement", choices=PLACEMENTS, default=None,
                        help="blocks: block b on rank b mod W; tokens: every rank runs every item on its share of "
                             "the tokens (sequence parallelism); default: planned, as the app plans it (blocks, "
                             "but tokens for a run whose ticks are one forward of several blocks)")
    parser.add_argument("--kv-exchange", choices=KV_EXCHANGES, default="auto",
                        help="how K/V move between ranks (auto: shared memory when all ranks share one x86-64 host's CPU)")
    parser.add_argument("--out", type=Path, required=True, help="rank 0 writes frames.npy, latents.npy, "
                                                                  "video.mp4 and stats.json here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """One rank of a torchrun job: every rank runs the pipeline, rank 0 writes the result."""
    args = _parse(argv)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.device == "cuda":
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        local_workers = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // local_workers))
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo",
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        model = load_model(args.model, device=device)
        request = GenerateRequest(prompt=args.prompt, mode="cascade" if args.window > 1 else "serial", model=args.model,
                                  blocks=args.blocks, steps=args.steps, window=args.window, stride=args.stride,
                                  recache=args.recache, joint=args.joint, seed=args.seed, threads=args.threads,
                                  executor="distributed", workers=dist.get_world_size(), placement=args.placement)
        request.validate()
        request = request.resolved(model)
        executor = RankExecutor(device, args.kv_exchange, placement=request.placement)
        output = BlockCausalPipeline(model)(request.prompts, request.schedule(model), executor, seed=request.seed,
                                            joint=request.joint)
        if dist.get_rank() == 0:
            args.out.mkdir(parents=True, exist_ok=True)
            np.save(args.out / "frames.npy", output.frames)
            np.save(args.out / "latents.npy", output.latents.float().numpy())
            write_mp4(output.frames, args.out / "video.mp4", fps=model.fps)
            stats = {**run_stats(request, model, executor, output), "executor": "torchrun", "device": args.device}
            (args.out / "stats.json").write_text(json.dumps(metrics.json_safe(stats), indent=1) + "\n")
            print(f"{executor.workers} ranks: {output.frames.shape[0]} frames in {stats['latency_s']:.2f} s, "
                  f"{stats['ticks']} ticks, {output.model_calls} forwards -> {args.out}")
        dist.barrier()  # no rank tears its groups (the tokens placement's mesh among them) down while another writes
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
