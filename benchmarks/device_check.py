"""The GPU check, in one go on one GPU, within 8 minutes: the figures of BENCHMARKS.md's GPU sections.

    bash benchmarks/device_check.sh                 # on a machine with a CUDA GPU (or:)
    python -m benchmarks.device_check [--out benchmarks/results] [--repeats 2]
    python -m benchmarks.device_check --quick --out /tmp/check   # CPU smoke run, smallest sizes

1. ``bench_gpu`` end to end on ``random-wan2.1-1.3b`` (the full-size transformer, umT5-XXL and the
   Wan VAE, random weights): ``OUT/bench_gpu.json`` and ``.md``.
2. The Service's ``compare`` on the GPU, as the app runs it: serial against the batched cascade on
   one GPU, and serial against a pool of one worker on the same GPU (the pool's own overhead: one
   worker cannot be faster than serial). Each is warmed up first (``Service.warm_up``).
3. The Wan VAE (full size, random weights) decoding a video block by block as the pipeline does:
   seconds and peak memory per block.

Parts 2 and 3 go to ``OUT/device_check.json`` and ``.md``, rewritten after each part, so a run cut
short keeps what it measured; ``python -m benchmarks.report`` puts both tables into BENCHMARKS.md.
``--quick``: ``random-tiny`` and a small VAE on the CPU, one repeat, for checking the script only.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks import bench_gpu
from cascade import metrics
from cascade.model.wan import random_vae
from cascade.service import UNLIMITED, GenerateRequest, Service

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "a red circle moving right"
GiB = 2**30
WAN_LATENT = (16, 60, 104)  # channels, height, width of a latent frame at 480×832
SMOKE_VAE = dict(base_dim=8, num_res_blocks=1)  # --quick: a small Wan VAE (16 latent channels as Wan's)
SMOKE_LATENT = (16, 8, 8)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go (default: benchmarks/results)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per bench_gpu variant")
    parser.add_argument("--blocks", type=int, default=7, help="video length in blocks (7: 81 frames)")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run at the smallest sizes")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.blocks = 1, 2
    return args


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GiB if device.type == "cuda" else None


def device_used_gib(device: torch.device) -> float | None:
    """What every process holds on the GPU now (a pool worker's share included)."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return (total - free) / GiB


def service_compare(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Serial vs the batched cascade, and serial vs a one-worker pool, through the Service."""
    model = "random-tiny" if args.quick else "random-wan2.1-1.3b"
    # on the CPU, one thread for serial and for the worker alike: two-thread torch beside any other
    # busy process swings 2-10x, which once showed a one-worker pool 13x faster than serial
    threads = 1 if device.type == "cpu" else None
    base = GenerateRequest(prompt=PROMPT, model=model, blocks=args.blocks, mode="cascade", threads=threads)
    rows = []
    with Service(device=device.type, limits=UNLIMITED) as service:
        for name, request in (("batched cascade on one GPU", replace(base, executor="batched")),
                              ("pool of one worker on one GPU", replace(base, executor="distributed", workers=1))):
            started = time.perf_counter()
            service.warm_up(request)
            warm_up_s = time.perf_counter() - started
            reset_peak(device)
            result = service.compare(request)
            s = result.stats
            rows.append({
                "name": name, "executor": request.executor, "workers": s["cascade"]["workers"],
                "warm_up_s": warm_up_s, "serial_latency_s": s["serial"]["latency_s"],
                "cascade_latency_s": s["cascade"]["latency_s"], "speedup": s["speedup"], "bound": s["ideal_speedup"],
                "plan": s["plan"]["summary"], "serial_fps": s["serial"]["fps"], "cascade_fps": s["cascade"]["fps"],
                "first_block_s": s["cascade"]["time_to_first_block_s"],
                "service_peak_gib": peak_gib(device), "device_used_gib": device_used_gib(device),
            })
            print(f"{name}: speedup {s['speedup']:.2f}x (bound {s['ideal_speedup']:.2f}x)", flush=True)
    return rows


def vae_decode(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """The VAE decoding one video block by block (3 latent frames each), as the pipeline does."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    channels, height, width = SMOKE_LATENT if args.quick else WAN_LATENT
    decoder = random_vae(device, dtype, SMOKE_VAE if args.quick else None)
    latents = torch.randn(1, channels, 3 * args.blocks, height, width, generator=torch.Generator().manual_seed(0))
    rows = []
    for repeat in ("warm-up", "timed"):
        stream = decoder.new_stream()
        for block in range(args.blocks):
            x = latents[:, :, 3 * block:3 * block + 3].to(device, dtype)
            reset_peak(device)
            started = time.perf_counter()
            frames = stream(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if repeat == "timed":
                rows.append({"block": block, "frames": int(frames.shape[0]), "seconds": time.perf_counter() - started,
                             "peak_gib": peak_gib(device)})
    return rows


def markdown(report: dict) -> str:
    def num(value, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    lines = [
        "## The Service and the VAE on one GPU (`bash benchmarks/device_check.sh`)",
        "",
        f"{report['device_name']}, torch {report['torch']} (CUDA {report['cuda']}){' (quick run)' if report['quick'] else ''}; "
        f"{report['blocks']} blocks. The Service's `compare` after its warm-up, as the app runs it "
        "(`random-wan2.1-1.3b`: the full-size transformer, random weights; its text encoder and decoder are stand-ins, "
        "so the latencies are denoising only). Peak: what the service's process allocated; used: the whole GPU "
        "after the run, a pool worker's share included.",
        "",
        "| run | workers | warm-up s | serial s | cascade s | × | bound × | plan | first block s | peak GiB | used GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.get("service", []):
        lines.append(f"| {r['name']} | {r['workers']} | {r['warm_up_s']:.1f} | {r['serial_latency_s']:.3f} | "
                     f"{r['cascade_latency_s']:.3f} | {r['speedup']:.2f} | {r['bound']:.2f} | {r['plan']} | "
                     f"{r['first_block_s']:.3f} | {num(r['service_peak_gib'], '.1f')} | {num(r['device_used_gib'], '.1f')} |")
    if report.get("vae_decode"):
        lines += ["", "The Wan VAE (full size, random weights, bf16) decoding one video block by block, after a warm-up "
                      "video: each block's seconds and the peak memory while it decodes.", "",
                  "| block | frames | seconds | peak GiB |", "|---|---|---|---|"]
        lines += [f"| {r['block']} | {r['frames']} | {r['seconds']:.3f} | {num(r['peak_gib'], '.2f')} |"
                  for r in report["vae_decode"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cpu" if args.quick else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("the device check needs a CUDA GPU (torch.cuda.is_available() is False); --quick runs on the CPU")
    args.out.mkdir(parents=True, exist_ok=True)
    gpu_argv = ["--json", str(args.out / "bench_gpu.json"), "--repeats", str(args.repeats), "--blocks", str(args.blocks)]
    bench_gpu.main(gpu_argv + (["--quick"] if args.quick else []))
    report = {"device_name": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
              "quick": args.quick, "blocks": args.blocks}

    def save() -> None:
        (args.out / "device_check.json").write_text(json.dumps(metrics.json_safe(report), indent=1) + "\n")
        (args.out / "device_check.md").write_text(markdown(report))

    report["service"] = service_compare(args, device)
    save()
    report["vae_decode"] = vae_decode(args, device)
    save()
    print(markdown(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
