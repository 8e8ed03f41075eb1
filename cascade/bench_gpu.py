"""Serial against Block Cascading on one GPU, at the full size of Wan2.1-1.3B (random weights).

    python -m cascade bench --device cuda --json OUT [--model random-wan2.1-1.3b] [--blocks 7] [--repeats 3]
                                          [--link-gb-per-s 100] [--markdown OUT.md]
    python -m benchmarks.bench_gpu --json benchmarks/results/bench_gpu.json [--model random-wan2.1-1.3b]
                                   [--device cuda] [--dtype bfloat16] [--blocks 7] [--repeats 3]
                                   [--link-gb-per-s 100] [--sequence-gpus 2,3,4,5,6,7,8] [--quick]

Part of the package's bench (an installed ``cascade`` has no ``benchmarks/``); the second form
is the repository's script, ``benchmarks/bench_gpu.py``, which runs this module's ``main``.

480×832 video = latent 16×60×104 per frame, 3 latent frames per block, 4 steps, bf16 (the preset's
dtype). For a Wan-latent model with random weights (``random-wan2.1-1.3b``) the text encoder and
the VAE are the full-size ones with random weights too (umT5-XXL, ``AutoencoderKLWan``), so the
end-to-end figures count what a user waits for: text encoding, denoising and decoding.

Every variant runs once untimed, then ``--repeats`` times; the run of median latency is reported.
``latency_s`` is denoising only (the end of the last forward); ``end_to_end_s`` is the wall time
of the whole request. FPS is counted as the Block Cascading paper counts it: a block of 3 latent
frames is 12 video frames (the VAE's temporal stride is 4), ``fps_paper = 12 * blocks / latency``;
``block_fps`` is the steady-state rate (the time to fill the pipeline left out);
``fps_end_to_end`` = decoded frames / end-to-end seconds.

The **projection** (computed, not measured) is what W GPUs would give each cascade of window W:
every tick runs its items at once, one per GPU, each taking the measured time of one serial
forward, and then every owner sends its block's K/V (its measured size) to the W−1 other GPUs,
one after another, over a link of ``--link-gb-per-s``; text encoding and decoding are the
measured ones of the serial run.

The **sequence-parallel projection** is what W GPUs would give the serial schedule with every
forward's tokens split over them, as the tokens placement runs it (``cascade/model/context_parallel.py``:
Ulysses where the heads divide by W, else Ring), for W = 2..8 (``--sequence-gpus``). What one
rank exchanges per forward of one block (``sequence_exchanges``) is, in each layer, Ulysses'
two all-to-alls of its share of the block's tokens (Q, K and V together by heads, the
attention's output back by tokens; the cached context needs none, as each rank caches its heads
of every token), or Ring's all-gather of its share of the block's and the cached context's K/V (the
context: its mean over the serial schedule's forwards); and once per forward the last block's
gather of the hidden states. Their time is **measured** on W processes where this machine has
them (``cascade/collective_costs.py``: W gloo processes on a CPU, NCCL on W GPUs), else
**modelled** as the bytes each rank receives over ``--link-gb-per-s``; the table says which.
Then (``sequence_row``), with ``forward_s`` the serial run's measured time per forward, N its
forwards and L the layers::

    communication_s(W) = L × layer_exchange_s(W) + gather_s(W)
    denoise_s(W)       = N × (forward_s / W + communication_s(W))
    speedup(W)         = serial latency_s / denoise_s(W)

It assumes a forward's compute splits evenly over the W GPUs (every op is per token but
attention, which Ulysses runs whole for H/W heads) and that no exchange overlaps compute. The
cascade's projected speedup on as many GPUs stands beside it.

One variant failing (out of memory, say) is recorded as an error and the others still run; the
JSON and its markdown table (same path, ``.md``) are rewritten after every variant, so a killed
run keeps what it measured. ``--quick`` is a CPU smoke run: ``random-tiny``, 2 blocks, 1 repeat.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from . import collective_costs, metrics
from .backend import LocalExecutor
from .model.presets import CascadeModel, load_model
from .model.wan import UMT5_XXL, random_text_encoder, random_vae
from .pipeline import BlockCausalPipeline
from .plan import tick_ratio
from .schedule import make_schedule

PROMPT = "a red circle moving right"
VIDEO_FRAMES_PER_BLOCK = 12  # 3 latent frames, VAE temporal stride 4
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
WAN_LATENT_CHANNELS = 16
TEXT_ENCODER_CONFIG = UMT5_XXL  # the full-size parts timed with the random transformer
VAE_CONFIG: dict | None = None  # None: AutoencoderKLWan's defaults, Wan2.1's VAE
DEFAULT_LINK_GB_PER_S = 100.0  # stated for the projection; NVLink is faster, PCIe 4 x16 slower
SEQUENCE_GPUS = tuple(range(2, 9))  # the sequence-parallel projection's W


def variants() -> list[dict]:
    """Serial (window 1) first, the reference of every speedup; then stride-1 cascades, batched
    on one GPU, and joint (the blocks in flight in one forward attending to each other)."""
    rows = [dict(name="serial", window=1, stride=None, recache=True, batched=False, joint=False),
            dict(name="serial, no recache", window=1, stride=None, recache=False, batched=False, joint=False)]
    for window in (2, 3, 5):
        for recache in (True, False):
            rows.append(dict(name=f"cascade W{window} s1{'' if recache else ', no recache'}",
                             window=window, stride=1, recache=recache, batched=True, joint=False))
    for window in (3, 5):
        rows.append(dict(name=f"cascade W{window} s1 joint", window=window, stride=1, recache=True, batched=False,
                         joint=True))
    return rows


def end_to_end_model(model: CascadeModel, device: torch.device) -> CascadeModel:
    """A random-weight Wan-latent model with the full-size text encoder and VAE (random weights
    too), so text encoding and decoding cost what they cost; other models as they are."""
    if not (model.random_weights and model.layout.channels == WAN_LATENT_CHANNELS):
        return model
    dtype = next(model.transformer.parameters()).dtype
    decoder = random_vae(device, dtype, VAE_CONFIG)
    return dataclasses.replace(model, text_encoder=random_text_encoder(TEXT_ENCODER_CONFIG, device, dtype),
                               decode=decoder, new_block_decoder=decoder.new_stream,
                               description=model.description + " + umT5 and VAE with random weights")


def kv_block_bytes(model: CascadeModel) -> int:
    """The K/V one block stages per forward, every layer (a cache of one block on no memory)."""
    lay = model.layout
    cache = model.transformer.new_kv_cache(lay.frames_per_block, lay.height, lay.width, device="meta")
    return cache.nbytes()


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
                             recache=variant["recache"], joint=variant["joint"])
    executor = LocalExecutor(device, batched=variant["batched"])
    pipeline = BlockCausalPipeline(model)
    reset_peak_memory(device)
    pipeline(PROMPT, schedule, executor, seed=0, joint=variant["joint"])
    runs = []
    for repeat in range(repeats):
        started = time.perf_counter()
        out = pipeline(PROMPT, schedule, executor, seed=0, joint=variant["joint"])
        wall = time.perf_counter() - started
        timing = metrics.run_timing(out.timeline, VIDEO_FRAMES_PER_BLOCK, blocks)
        runs.append({**timing, "end_to_end_s": wall, "text_s": out.text_s, "decode_s": out.decode_s,
                     "forward_s": statistics.median(e.end - e.start for e in out.timeline),
                     "frames": int(out.frames.shape[0])})
        print(f"  {variant['name']}: run {repeat + 1}/{repeats} {runs[-1]['latency_s']:.3f} s", flush=True)
    latencies = [r["latency_s"] for r in runs]
    median = sorted(runs, key=lambda r: r["latency_s"])[(len(runs) - 1) // 2]
    return {
        "schedule": schedule, "latencies_s": latencies, "latency_s": median["latency_s"],
        "fps_paper": median["fps"], "block_fps": median["block_fps"],
        "time_to_first_block_s": median["time_to_first_block_s"], "forwards": median["forwards"],
        "end_to_end_s": median["end_to_end_s"], "fps_end_to_end": median["frames"] / median["end_to_end_s"],
        "text_s": median["text_s"], "decode_s": median["decode_s"], "forward_s": median["forward_s"],
        "frames": median["frames"],
        "ticks": schedule.num_ticks, "max_parallel": schedule.max_parallel, "model_calls": out.model_calls,
        "peak_memory_gib": peak_memory_gib(device),
    }


def projection(rows: list[dict], kv_bytes: int, link_gb_per_s: float, blocks: int) -> dict:
    """W-GPU figures of every measured causal cascade (joint ones run on one device), from the
    serial run's per-forward time, text and decode seconds, the schedule's ticks and the K/V
    size: a computation, not a measurement."""
    serial = next((r for r in rows if r["name"] == "serial" and "error" not in r), None)
    if serial is None:
        return {}
    projected = []
    for row in rows:
        if "error" in row or row.get("joint") or row["window"] == 1:
            continue
        gpus = row["window"]
        comm_s = (gpus - 1) * kv_bytes / (link_gb_per_s * 1e9)
        denoise_s = row["ticks"] * (serial["forward_s"] + comm_s)
        whole_s = serial["text_s"] + denoise_s + serial["decode_s"]
        projected.append({"name": row["name"], "gpus": gpus, "ticks": row["ticks"], "comm_per_tick_s": comm_s,
                          "denoise_s": denoise_s, "fps_paper": VIDEO_FRAMES_PER_BLOCK * blocks / denoise_s,
                          "end_to_end_s": whole_s, "fps_end_to_end": serial["frames"] / whole_s,
                          "speedup_vs_serial": serial["latency_s"] / denoise_s})
    return {"link_gb_per_s": link_gb_per_s, "kv_block_bytes": kv_bytes, "forward_s": serial["forward_s"],
            "rows": projected}


def sequence_geometry(model: CascadeModel, blocks: int) -> dict:
    """What sequence parallelism exchanges depends on: the transformer's layers, heads and head
    size, its bytes per element, a frame's tokens, a block's frames, and the cached context a
    forward of the serial schedule attends to on average (in frames, within the local window)."""
    config, lay = model.transformer.config, model.layout
    serial = make_schedule(blocks, model.sampler.num_steps)
    window = model.local_window or blocks * lay.frames_per_block
    context = statistics.mean(min(item.block * lay.frames_per_block, window)
                              for tick in serial.ticks for item in tick)
    return {"layers": config.num_layers, "heads": config.num_attention_heads, "head_dim": config.attention_head_dim,
            "element_bytes": next(model.transformer.parameters()).element_size(),
            "tokens_per_frame": model.transformer.tokens_per_frame(lay.height, lay.width),
            "frames_per_block": lay.frames_per_block, "mean_context_frames": context}


def sequence_exchanges(geometry: dict, gpus: int) -> dict:
    """One rank's collectives per forward of one block on ``gpus`` ranks, as ``TokenParallel`` runs
    them, in bytes on each rank (its share: the largest, where a frame's tokens do not divide):
    ``layer``, each layer's; ``gather``, the last block's gather of the hidden states."""
    g = geometry
    share = -(-g["tokens_per_frame"] // gpus)
    width = g["heads"] * g["head_dim"] * g["element_bytes"]  # one token of Q, K, V or hidden states
    block = g["frames_per_block"] * share * width
    if g["heads"] % gpus == 0:
        attention, layer = "ulysses", [("all_to_all", 3 * block), ("all_to_all", block)]  # Q/K/V, the output back
    else:
        context = round(g["mean_context_frames"] * share * width)
        attention, layer = "ring", [("all_gather", 2 * (block + context))]  # K and V, with the context
    return {"attention": attention, "layer": layer, "gather": [("all_gather", block)]}


def modelled_seconds(collectives: list[tuple[str, int]], gpus: int, link_gb_per_s: float) -> float:
    """The bytes one rank receives in ``collectives`` (an all-to-all: the others' parts of theirs;
    an all-gather: every other rank's) over a link of ``link_gb_per_s``."""
    received = sum(nbytes * (gpus - 1) / gpus if kind == "all_to_all" else nbytes * (gpus - 1)
                   for kind, nbytes in collectives)
    return received / (link_gb_per_s * 1e9)


def exchange_seconds(exchanges: dict, gpus: int, device: torch.device, link_gb_per_s: float) -> tuple[dict, str]:
    """Seconds of one layer's exchange and of the gather on ``gpus`` ranks: measured on this
    machine where it has that many processes of its device, else modelled; and which it was."""
    groups = {"layer": exchanges["layer"], "gather": exchanges["gather"]}
    if device.type == "cpu":
        return collective_costs.measure(groups, gpus), f"measured, {gpus} gloo processes"
    if torch.cuda.device_count() >= gpus:
        return collective_costs.measure(groups, gpus, "cuda"), f"measured, {gpus} GPUs (NCCL)"
    return ({name: modelled_seconds(group, gpus, link_gb_per_s) for name, group in groups.items()},
            f"modelled, {link_gb_per_s:g} GB/s")


def sequence_row(serial: dict, gpus: int, layers: int, layer_s: float, gather_s: float) -> dict:
    """The projected sequence-parallel run on ``gpus`` GPUs from the serial run's figures
    (``forward_s``, ``forwards``, ``latency_s``) and the exchanges' seconds (module docstring)."""
    communication = layers * layer_s + gather_s
    compute = serial["forward_s"] / gpus
    denoise = serial["forwards"] * (compute + communication)
    return {"gpus": gpus, "layer_exchange_s": layer_s, "gather_s": gather_s, "compute_per_forward_s": compute,
            "communication_per_forward_s": communication, "denoise_s": denoise,
            "communication_share": communication / (compute + communication),
            "speedup_vs_serial": serial["latency_s"] / denoise}


def sequence_projection(model: CascadeModel, report: dict, gpus: tuple[int, ...], device: torch.device,
                        link_gb_per_s: float) -> dict:
    """The sequence-parallel projection for each of ``gpus``, beside the cascade's best projected
    speedup on as many GPUs (none where no projected cascade has that window)."""
    serial = next((r for r in report["variants"] if r["name"] == "serial" and "error" not in r), None)
    if serial is None:
        return {}
    geometry = sequence_geometry(model, report["blocks"])
    cascades = (report.get("projection") or {}).get("rows", [])
    rows = []
    for count in gpus:
        exchanges = sequence_exchanges(geometry, count)
        try:
            seconds, source = exchange_seconds(exchanges, count, device, link_gb_per_s)
        except Exception as error:  # a count that cannot start (memory, ports) must not end the bench
            rows.append({"gpus": count, "attention": exchanges["attention"], "error": f"{type(error).__name__}: {error}"})
            print(f"sequence on {count} GPUs: FAILED {rows[-1]['error']}", flush=True)
            continue
        row = sequence_row(serial, count, geometry["layers"], seconds["layer"], seconds["gather"])
        best = max((c["speedup_vs_serial"] for c in cascades if c["gpus"] == count), default=None)
        rows.append({**row, "attention": exchanges["attention"], "exchange": source,
                     "layer_bytes": sum(n for _, n in exchanges["layer"]), "cascade_speedup_vs_serial": best})
        print(f"sequence on {count} GPUs ({exchanges['attention']}, {source}): {row['speedup_vs_serial']:.2f}x",
              flush=True)
    return {"geometry": geometry, "forward_s": serial["forward_s"], "forwards": serial["forwards"], "rows": rows}


def run(args: argparse.Namespace, report: dict, save) -> None:
    """Measure every variant into ``report["variants"]``, saving after each one."""
    device = torch.device(args.device)
    model = end_to_end_model(load_model(args.model, device=device, dtype=DTYPES.get(args.dtype)), device)
    lay = model.layout
    kv_bytes = kv_block_bytes(model)
    report.update(
        model=model.name, description=model.description, random_weights=model.random_weights, blocks=args.blocks,
        steps=model.sampler.num_steps, latent_frame=[lay.channels, lay.height, lay.width],
        latent_frames_per_block=lay.frames_per_block, kv_block_bytes=kv_bytes,
        dtype=str(next(model.transformer.parameters()).dtype).removeprefix("torch."),
    )
    serial = None
    for variant in variants():
        print(f"{variant['name']}: warm-up and {args.repeats} timed run(s)", flush=True)
        row = {k: variant[k] for k in ("name", "window", "stride", "recache", "joint")}
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
                figures["tick_ratio"] = tick_ratio(serial[0], schedule)
                figures["speedup_vs_serial"] = serial[1] / figures["latency_s"]
            row.update(figures)
            print(f"{variant['name']}: {row['latency_s']:.3f} s, {row['fps_paper']:.1f} FPS", flush=True)
        report["variants"].append(row)
        report["projection"] = projection(report["variants"], kv_bytes, args.link_gb_per_s, args.blocks)
        save(report)
    report["sequence_projection"] = sequence_projection(model, report, tuple(args.sequence_gpus), device,
                                                        args.link_gb_per_s)
    save(report)


def _error_row(cells: tuple, error: str, columns: int) -> str:
    """A table row of ``columns`` that names what failed (its first ``cells``) and how."""
    named = " | ".join(map(str, cells))
    return f"| {named} | error: {error[:120]} |" + " |" * (columns - len(cells) - 1)


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
        "| variant | executor | ticks | tick ratio × | latency s | × vs serial | FPS (paper) | steady block FPS | "
        "first block s | end to end s | FPS end to end | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["variants"]:
        if "error" in r:
            lines.append(_error_row((r["name"], r["executor"]), r["error"], columns=12))
            continue
        lines.append(
            f"| {r['name']} | {r['executor']} | {r['ticks']} | {_num(r.get('tick_ratio'), '.2f')} | "
            f"{r['latency_s']:.3f} | {_num(r.get('speedup_vs_serial'), '.2f')} | {r['fps_paper']:.1f} | "
            f"{_num(r['block_fps'], '.1f')} | {r['time_to_first_block_s']:.3f} | {r['end_to_end_s']:.3f} | "
            f"{r['fps_end_to_end']:.1f} | {_num(r['peak_memory_gib'], '.1f')} |"
        )
    return "\n".join(lines + projection_lines(report.get("projection") or {})
                     + sequence_lines(report.get("sequence_projection") or {})) + "\n"


def projection_lines(projected: dict) -> list[str]:
    if not projected.get("rows"):
        return []
    lines = [
        "",
        f"**Projection to W GPUs (computed, not measured)**: each tick's items run at once, one per GPU, in the "
        f"serial run's time per forward ({projected['forward_s'] * 1e3:.1f} ms); then each owner sends its block's "
        f"K/V ({projected['kv_block_bytes'] / 2**20:.0f} MiB) to the W−1 others one after another at "
        f"{projected['link_gb_per_s']:g} GB/s; text encoding and decoding as measured serially.",
        "",
        "| variant | GPUs | ticks | K/V per tick s | denoise s | × vs serial | FPS (paper) | end to end s | FPS end to end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in projected["rows"]:
        lines.append(f"| {r['name']} | {r['gpus']} | {r['ticks']} | {r['comm_per_tick_s']:.4f} | {r['denoise_s']:.3f} | "
                     f"{r['speedup_vs_serial']:.2f} | {r['fps_paper']:.1f} | {r['end_to_end_s']:.3f} | "
                     f"{r['fps_end_to_end']:.1f} |")
    return lines


def sequence_lines(projected: dict) -> list[str]:
    if not projected.get("rows"):
        return []
    g = projected["geometry"]
    lines = [
        "",
        f"**Sequence parallelism projected to W GPUs** (the serial schedule, each forward's tokens split over "
        f"them; computed from measured parts): each GPU computes 1/W of the serial run's forward "
        f"({projected['forward_s'] * 1e3:.1f} ms), then waits for its exchanges: per layer Ulysses' 2 all-to-alls "
        f"(Q/K/V together, then the output; the {g['heads']} heads divide by W) or Ring's K/V all-gather with the mean cached context "
        f"({g['mean_context_frames']:.1f} frames), and one gather of the hidden states per forward; "
        f"{g['layers']} layers, {g['frames_per_block']} frames × {g['tokens_per_frame']} tokens per block, "
        f"{g['heads']} × {g['head_dim']} dims, {g['element_bytes']} bytes each. Measured where this machine has W "
        f"processes of its device, else modelled over the link; no overlap of exchanges with compute.",
        "",
        "| GPUs | attention | exchanges | per layer MiB | per layer ms | compute per forward ms | "
        "communication per forward ms | communication share | denoise s | × vs serial | cascade × (same GPUs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in projected["rows"]:
        if "error" in r:
            lines.append(_error_row((r["gpus"], r["attention"]), r["error"], columns=11))
            continue
        lines.append(f"| {r['gpus']} | {r['attention']} | {r['exchange']} | {r['layer_bytes'] / 2**20:.2f} | "
                     f"{r['layer_exchange_s'] * 1e3:.3f} | {r['compute_per_forward_s'] * 1e3:.1f} | "
                     f"{r['communication_per_forward_s'] * 1e3:.1f} | {r['communication_share']:.0%} | "
                     f"{r['denoise_s']:.3f} | {r['speedup_vs_serial']:.2f} | "
                     f"{_num(r['cascade_speedup_vs_serial'], '.2f')} |")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, type=Path, help="results; the table goes next to it (.md)")
    parser.add_argument("--model", default="random-wan2.1-1.3b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: the preset's (bf16 for Wan)")
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--link-gb-per-s", type=float, default=DEFAULT_LINK_GB_PER_S,
                        help="link bandwidth the W-GPU projection assumes")
    parser.add_argument("--sequence-gpus", type=_gpu_counts, default=SEQUENCE_GPUS,
                        help="comma-separated W of the sequence-parallel projection (default 2,...,8)")
    parser.add_argument("--quick", action="store_true",
                        help="CPU smoke run: random-tiny, 2 blocks, 1 repeat, the sequence projection on 2")
    args = parser.parse_args(argv)
    if args.blocks < 1 or args.repeats < 1:
        parser.error("--blocks and --repeats must be at least 1")
    if args.quick:
        args.model, args.device, args.blocks, args.repeats, args.sequence_gpus = "random-tiny", "cpu", 2, 1, (2,)
    return args


def _gpu_counts(text: str) -> tuple[int, ...]:
    counts = tuple(int(part) for part in text.split(","))
    if any(count < 2 for count in counts):
        raise argparse.ArgumentTypeError(f"each count of GPUs must be at least 2, got {text}")
    return counts


def main(argv: list[str] | None = None) -> int:
    try:
        return run_gpu(parse_args(argv))
    except ValueError as error:
        sys.exit(str(error))


def run_gpu(args: argparse.Namespace) -> int:
    """The GPU bench for any caller's namespace (``python -m cascade bench --device cuda``):
    reads ``device``, ``model``, ``blocks``, ``repeats``, ``json``, and if present ``dtype``,
    ``markdown``, ``quick`` and ``link_gb_per_s``; missing ones take this script's defaults."""
    args = _with_defaults(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device} was asked for, but CUDA is not available to torch "
                         f"{torch.__version__} here (torch.version.cuda = {torch.version.cuda}); use --device cpu")
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
    if args.markdown:
        args.markdown.write_text(markdown(report))
    print(table.read_text(), flush=True)
    return 0


def _with_defaults(args: argparse.Namespace) -> argparse.Namespace:
    defaults = dict(model="random-wan2.1-1.3b", dtype=None, blocks=7, repeats=3, markdown=None, quick=False,
                    link_gb_per_s=DEFAULT_LINK_GB_PER_S, sequence_gpus=SEQUENCE_GPUS)
    given = {k: v for k, v in vars(args).items() if v is not None}
    return argparse.Namespace(**{**defaults, **given})


if __name__ == "__main__":
    sys.exit(main())
