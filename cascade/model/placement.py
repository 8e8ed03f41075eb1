"""Where a model's parts go on a machine's GPUs, and how much each GPU then holds: the memory plan.

On N GPUs the Service runs by default (``pool_workers``) one pool worker per GPU when there are
two or more, worker i on ``cuda:i``, each holding the transformer only (a pool replica: no text
encoder, no VAE) and the K/V cache of the whole video; on one GPU, every run on that GPU. The
Service itself holds, on ``cuda:0``, what every run shares: the transformer the serial run uses
(one GPU of the kind each cascade worker has, as the Block Cascading paper counts speedup), the
VAE, that run's K/V cache and the text encoder, when ``cuda:0`` can hold it as well; otherwise the
text encoder goes to the CPU, where it runs once per prompt. Every process on a GPU also keeps
working memory (activations, the allocator's slack).

Arithmetic on byte counts only: the Hub loader places the text encoder by it, for the GPUs this
machine has (``hub_models.plan_text_device``), the Service's default backend follows
``pool_workers``, and ``python -m cascade placement --table`` prints it for the README.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

GB = 10**9  # as GPUs are sold: 24, 48, 80 GB
WORKING_MEMORY = 2 * 2**30  # per process on a GPU: activations and allocator slack beyond weights and K/V


def pool_workers(devices: int) -> int:
    """The default backend's pool workers on ``devices`` devices: one per device when there are
    two or more; 0 when there is one (every run on that device, batched)."""
    return devices if devices >= 2 else 0


def kv_cache_bytes(num_layers: int, num_heads: int, head_dim: int, tokens_per_frame: int, frames: int,
                   element_size: int) -> int:
    """What a ``KVCache`` of ``frames`` latent frames allocates: K and V of every layer."""
    return 2 * num_layers * num_heads * head_dim * tokens_per_frame * frames * element_size


@dataclass(frozen=True)
class Parts:
    """Bytes each part of a model takes at the dtype it runs in; the K/V cache of one video."""

    transformer: int
    text_encoder: int
    vae: int
    kv_cache: int

    def describe(self) -> str:
        return (f"transformer {self.transformer / GB:.1f} GB, text encoder {self.text_encoder / GB:.1f} GB, "
                f"VAE {self.vae / GB:.2f} GB, K/V cache {self.kv_cache / GB:.1f} GB, "
                f"+{WORKING_MEMORY / GB:.1f} GB working memory per process")


@dataclass(frozen=True)
class Holding:
    """One part one process keeps on one device."""

    device: str  # "cuda:0", ..., or "cpu"
    holder: str  # "service" or "worker i"
    part: str  # "transformer", "text encoder", "VAE", "K/V cache" or "working memory"
    bytes: int


@dataclass(frozen=True)
class MemoryPlan:
    """What every device holds: ``gpus`` GPUs of ``gpu_bytes`` each, a pool of ``workers`` (0: one
    GPU runs everything)."""

    gpus: int
    gpu_bytes: int
    workers: int
    holdings: tuple[Holding, ...]

    @property
    def text_encoder_device(self) -> str:
        return next(h.device for h in self.holdings if h.part == "text encoder")

    def used(self, device: str) -> int:
        return sum(h.bytes for h in self.holdings if h.device == device)

    def holders(self, device: str) -> dict[str, list[Holding]]:
        """The processes on ``device`` and what each keeps there, in order."""
        on: dict[str, list[Holding]] = {}
        for holding in self.holdings:
            if holding.device == device:
                on.setdefault(holding.holder, []).append(holding)
        return on

    def describe(self, device: str) -> str:
        """``service: transformer, VAE, K/V cache, text encoder (22.6 GB)`` and so on, per process."""
        return "; ".join(f"{holder}: {', '.join(h.part for h in held if h.part != 'working memory')} "
                         f"({sum(h.bytes for h in held) / GB:.1f} GB)" for holder, held in self.holders(device).items())


def place(parts: Parts, gpus: int, gpu_bytes: int, host_bytes: int | None = None,
          name: str = "the model") -> MemoryPlan:
    """The memory plan of ``parts`` on ``gpus`` GPUs of ``gpu_bytes`` each (see the module's text);
    ``host_bytes``: the CPU's free memory, when known. ValueError, one line, when a GPU cannot hold
    its parts or the CPU the text encoder that ``cuda:0`` has no room for."""
    if gpus < 1:
        raise ValueError(f"a memory plan is for one GPU or more, got {gpus}")
    workers = pool_workers(gpus)
    service = (("transformer", parts.transformer), ("VAE", parts.vae), ("K/V cache", parts.kv_cache),
               ("working memory", WORKING_MEMORY))
    replica = (("transformer", parts.transformer), ("K/V cache", parts.kv_cache), ("working memory", WORKING_MEMORY))
    holdings = [Holding("cuda:0", "service", part, size) for part, size in service]
    holdings += [Holding(f"cuda:{w}", f"worker {w}", part, size) for w in range(workers) for part, size in replica]
    plan = MemoryPlan(gpus, gpu_bytes, workers, tuple(holdings))
    fullest = max((f"cuda:{i}" for i in range(gpus)), key=plan.used)
    if plan.used(fullest) > gpu_bytes:
        raise ValueError(f"{name} needs about {plan.used(fullest) / GB:.1f} GB on {fullest} "
                         f"({plan.describe(fullest)}) and {gpu_bytes / GB:.1f} GB are free there; "
                         "use GPUs with more memory")
    text_device = "cuda:0" if plan.used("cuda:0") + parts.text_encoder <= gpu_bytes else "cpu"
    if text_device == "cpu" and host_bytes is not None and parts.text_encoder > host_bytes:
        raise ValueError(f"{name}'s text encoder needs about {parts.text_encoder / GB:.1f} GB on the CPU (cuda:0 has "
                         f"no room for it) and {host_bytes / GB:.1f} GB are free there")
    return replace(plan, holdings=plan.holdings + (Holding(text_device, "service", "text encoder", parts.text_encoder),))
