"""Token parallelism for ``CausalWanTransformer``: every process runs every forward on its share
of the tokens, through diffusers' context parallelism (``ContextParallelConfig``, its device
mesh, its sharders and its templated Ring attention) and a Ulysses attention of our own.

The processes of the initialised torch.distributed group split the tokens of **every latent
frame**: rank r holds tokens [lo_r, hi_r) of each frame (``torch.tensor_split``'s shares, so a
token count that does not divide by W is fine). Splitting per frame rather than along the whole
sequence is what lets each process keep its share of the block KV cache as an ordinary
``KVCache``: with Ring attention it keeps the K/V of its own tokens of every frame (a cache with
fewer tokens per frame), so local windows and sink frames select frames exactly as on one device.

- **Ulysses** (the heads divide by W): Q, K and V go out by heads in one all-to-all, after which
  this process holds every token of the forward for H/W heads. Its cache holds those heads for
  every token: between the two all-to-alls it stages the block's K/V and prepends the cached
  context. diffusers' template sends Q, K and V in three all-to-alls, and each exchange costs its
  latency whatever its size: on the CPU those latencies were most of a forward's communication.
- **Ring** (otherwise): each process's local K/V are its share of the cached context plus its
  share of the block; diffusers' ring gathers them and merges the partial attentions by their
  log-sum-exp.

What diffusers' engine did not carry as it is, and how it is extended through its own doors:

- the split: diffusers' plan hooks split one dimension of a module's input or output. Our
  per-frame split is its sharders (``EquipartitionSharder``, or ``PartitionAnythingSharder`` when
  the frame's tokens do not divide) applied to a [rows, frames, tokens, ...] view, in hooks
  (``ModelHook``) on the transformer blocks: block 0 splits the hidden states, every block gets
  the shares of the RoPE tables and per-frame modulation, the last block gathers (a list
  all-gather, which every backend takes, ``cascade_shm`` included);
- the attention: the templated Ring attention takes its forward op as a parameter. Ours returns
  the log-sum-exp on every device (diffusers' native op refuses it, so its Ring attention needs a
  CUDA flash or cuDNN kernel). Ulysses needs the K/V as they are after the all-to-all, which no
  backend lets a caller reach, and one exchange for all three. Worth proposing upstream: a
  callback on the exchanged K/V (any KV-cached causal model needs it), Q/K/V in one all-to-all,
  and the log-sum-exp from the native backend.

The device mesh's Ulysses dimension takes the backend ``ulysses_backend`` names (the pool names
``cascade_shm``, collectives through shared memory, for CPU workers of one host), and every
exchange here goes through that dimension's group; Ring's functional all-gathers need a C++
backend and stay on the group's own.

**Communication, measured.** Every collective this process takes part in during a forward is
timed here, where they all pass: Ulysses' two all-to-alls with the reshuffles around them, Ring's
K/V gather (the templated attention's time minus that of the forward op it calls), the last
block's gather of the tokens, and ``total`` (BWCache's sums). ``traffic()`` hands on what was
spent since its last call (the pool reads it after each tick). On a GPU each reading of the clock
waits for the device, so the seconds are the collectives' own rather than their launch.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.context_parallel import EquipartitionSharder, PartitionAnythingSharder
from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig
from diffusers.models.attention_dispatch import _templated_context_parallel_attention
from torch.distributed.device_mesh import init_device_mesh

_TOKEN_SHARE_HOOK = "token_share"
ULYSSES, RING = "ulysses", "ring"


@dataclass
class Traffic:
    """What one process's collectives took: ``seconds`` in them (waiting for slower peers
    included: time this process could not compute), and the payload it ``sent`` (its data that the
    others receive) and ``received`` (theirs), in bytes, as the shares give them (not gloo's or
    NCCL's wire bytes, which depend on their algorithms)."""

    seconds: float = 0.0
    sent: int = 0
    received: int = 0

    def add(self, seconds: float, sent: int, received: int) -> None:
        self.seconds += seconds
        self.sent += sent
        self.received += received


def frame_shares(tokens_per_frame: int, ranks: int) -> list[int]:
    """How many of each frame's tokens every rank holds (``torch.tensor_split``'s sizes)."""
    base, extra = divmod(tokens_per_frame, ranks)
    return [base + (rank < extra) for rank in range(ranks)]


class TokenParallel:
    """This process's part in running every forward on all processes of the default
    torch.distributed group, each on its share of every frame's tokens.

    ``reuse``: an earlier run's ``TokenParallel`` of the same transformer; its device mesh (new
    process groups, which take every process and some time to make) is kept when it fits.
    Collective: every process constructs it at the same point.
    """

    def __init__(self, transformer, tokens_per_frame: int, device: torch.device, reuse: "TokenParallel | None" = None,
                 ulysses_backend: str | None = None):
        self.ranks, self.rank = dist.get_world_size(), dist.get_rank()
        self.heads = transformer.config.num_attention_heads
        if tokens_per_frame < self.ranks:
            raise ValueError(f"{self.ranks} processes cannot share the {tokens_per_frame} tokens of a frame")
        self.kind = ULYSSES if self.heads % self.ranks == 0 else RING
        self.shares = frame_shares(tokens_per_frame, self.ranks)
        uneven = len(set(self.shares)) > 1
        degree = {"ulysses_degree": self.ranks} if self.kind == ULYSSES else {"ring_degree": self.ranks}
        config = ContextParallelConfig(**degree, ulysses_anything=uneven and self.kind == ULYSSES,
                                       ring_anything=uneven and self.kind == RING)
        self.ulysses_backend = ulysses_backend if self.kind == ULYSSES else None
        fits = (reuse is not None and reuse.mesh.device_type == device.type and reuse.kind == self.kind
                and reuse.ulysses_backend == self.ulysses_backend)
        override = {"ulysses": self.ulysses_backend} if self.ulysses_backend else None
        self.mesh = reuse.mesh if fits else init_device_mesh(device.type, config.mesh_shape,
                                                             mesh_dim_names=config.mesh_dim_names,
                                                             backend_override=override)
        self.config = ParallelConfig(context_parallel_config=config)
        self.config.setup(self.rank, self.ranks, device, mesh=self.mesh)
        # every exchange of ours goes where Ulysses' all-to-alls go (Ring: the flattened mesh)
        self._group = (self.mesh["ulysses"] if self.kind == ULYSSES else self._flat).get_group()
        self._share = PartitionAnythingSharder.shard_anything if uneven else EquipartitionSharder.shard
        self.device = device
        self._traffic = Traffic()  # since the last ``traffic()``: every run starts its own TokenParallel

    @property
    def collectives_backend(self) -> str:
        """The torch.distributed backend this process's exchanges go through."""
        return dist.get_backend(self._group)

    @property
    def _flat(self):
        return self.config.context_parallel_config._flattened_mesh

    def traffic(self) -> Traffic:
        """What this process's collectives took since the last call (or since it was made)."""
        spent, self._traffic = self._traffic, Traffic()
        return spent

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _gathered_payload(self, nbytes: int) -> tuple[int, int]:
        """(sent, received) of a gather of this process's ``nbytes`` of some frames' tokens: the
        others' shares of the same frames arrive."""
        mine = self.shares[self.rank]
        return nbytes, nbytes // mine * (sum(self.shares) - mine)

    def _ulysses_payload(self, query: torch.Tensor, frames: int) -> tuple[int, int]:
        """(sent, received) of Ulysses' four all-to-alls: Q, K and V [rows, S_r, H, D] go out by
        heads (every token of H/W heads comes back), the output [rows, S, H/W, D] by tokens."""
        rows, mine, heads, dim = query.shape
        everyone, own_heads = frames * sum(self.shares), heads // self.ranks
        unit = rows * dim * query.element_size()
        sent = unit * (3 * mine * (heads - own_heads) + (everyone - mine) * own_heads)
        received = unit * (3 * (everyone - mine) * own_heads + mine * (heads - own_heads))
        return sent, received

    def cache_shard(self) -> dict:
        """The KV cache geometry this process keeps: H/W heads of every token (Ulysses), or every
        head of its own tokens of each frame (Ring)."""
        if self.kind == ULYSSES:
            return {"num_heads": self.heads // self.ranks}
        return {"tokens_per_frame": self.shares[self.rank]}

    # --- tokens ------------------------------------------------------------------------------

    def take(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """This process's tokens of ``x`` [rows, frames·T, ...]: [rows, frames·T_r, ...]."""
        return self._share(x.unflatten(1, (frames, -1)), 2, self._flat).flatten(1, 2)

    def gather(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """Every process's tokens, in frame order: the inverse of ``take`` on every process."""
        start = self._now()
        whole = self._gather_shares(x.unflatten(1, (frames, -1)), 2).flatten(1, 2)
        self._traffic.add(self._now() - start, *self._gathered_payload(x.nbytes))
        return whole

    def _gather_shares(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Every process's ``x`` joined along ``dim``: each padded to the largest share, gathered,
        and cut back (one all-gather of equal sizes, which gloo needs when the shares differ; the
        list form, which a Python backend takes, where diffusers' sharder uses a functional one)."""
        widest = max(self.shares)
        padded = torch.nn.functional.pad(x, (0, 0) * (x.ndim - 1 - dim) + (0, widest - x.shape[dim])).contiguous()
        parts = [torch.empty_like(padded) for _ in range(self.ranks)]
        dist.all_gather(parts, padded, group=self._group)
        return torch.cat([part.narrow(dim, 0, share) for part, share in zip(parts, self.shares)], dim=dim)

    def total(self, sums: torch.Tensor) -> torch.Tensor:
        """``sums`` added over every process, in rank order: the same bits on every process, so
        decisions taken on them (BWCache's) agree."""
        start = self._now()
        parts = [torch.empty_like(sums) for _ in range(self.ranks)]
        dist.all_gather(parts, sums.contiguous(), group=self._group)
        self._traffic.add(self._now() - start, sums.nbytes, (self.ranks - 1) * sums.nbytes)
        return torch.stack(parts).sum(0)

    # --- attention ---------------------------------------------------------------------------

    def attention(self, with_cache, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  frames: int) -> torch.Tensor:
        """Self-attention of this process's queries [rows, S_r, H, D] over every token of the
        forward and the cached context. ``with_cache(key, value)`` stages the forward's own K/V
        (in frame order) and returns them after the cached context the rows see, with a mask.

        Its communication is the time outside the attention itself: the exchanges, their waits
        and the reshuffles around them (for Ring, also the merging of the partial attentions by
        their log-sum-exp, which one device does not do either)."""
        if self.kind == ULYSSES:
            return self._ulysses(with_cache, query, key, value, frames)
        key, value, mask = with_cache(key, value)
        _refuse_mask(mask)
        computing = []

        def timed_op(*args, **kwargs):
            start = self._now()
            out = _attention_op(*args, **kwargs)
            computing.append(self._now() - start)
            return out

        start = self._now()
        out = _templated_context_parallel_attention(query, key, value, forward_op=timed_op, backward_op=None,
                                                    _parallel_config=self.config)
        self._traffic.add(self._now() - start - sum(computing), *self._gathered_payload(key.nbytes + value.nbytes))
        return out

    def _ulysses(self, with_cache, query, key, value, frames: int) -> torch.Tensor:
        """Ulysses: Q, K and V go out by heads in one all-to-all (diffusers' template sends them in
        three, each paying the exchange's latency for a third of the bytes), so this process gets
        every token of the forward for its H/W heads, put in frame order as they are joined. The
        K/V are staged in the cache and joined by the cached context; the output goes back by
        tokens in a second all-to-all."""
        rows, mine, heads, dim = query.shape
        own = heads // self.ranks
        start = self._now()
        # [W (destination), 3, rows, S_r, H/W, D], made contiguous by the stack itself
        outgoing = torch.stack([x.unflatten(2, (self.ranks, own)).permute(2, 0, 1, 3, 4)
                                for x in (query, key, value)], dim=1)
        unit = 3 * rows * frames * own * dim
        arriving = [unit * share for share in self.shares]
        arrived = self._all_to_all(outgoing, [unit * self.shares[self.rank]] * self.ranks, arriving).split(arriving)
        # each rank's tokens of every frame, joined frame by frame: [3, rows, frames·T, H/W, D]
        q, k, v = torch.cat([part.view(3, rows, frames, share, own, dim) for part, share in zip(arrived, self.shares)],
                            dim=3).flatten(2, 3).unbind(0)
        spent = self._now() - start
        k, v, mask = with_cache(k, v)
        _refuse_mask(mask)
        out = _attention_op(None, q, k, v)
        start = self._now()
        unit = rows * frames * own * dim
        back = self._all_to_all(torch.cat([part.reshape(-1) for part in out.unflatten(1, (frames, -1)).split(self.shares, 2)]),
                                [unit * share for share in self.shares], [unit * self.shares[self.rank]] * self.ranks)
        # every rank's heads of this process's tokens, in equal consecutive parts: [W, rows, S_r, H/W, D]
        out = back.view(self.ranks, rows, mine, own, dim).permute(1, 2, 0, 3, 4).reshape(query.shape)
        self._traffic.add(spent + self._now() - start, *self._ulysses_payload(query, frames))
        return out

    def _all_to_all(self, outgoing: torch.Tensor, sizes: list[int], arriving: list[int]) -> torch.Tensor:
        """``outgoing`` (contiguous) in consecutive parts of ``sizes`` elements, part r to rank r;
        returns what every rank sent here, one flat tensor of consecutive ``arriving`` parts in
        rank order."""
        received = torch.empty(sum(arriving), dtype=outgoing.dtype, device=outgoing.device)
        dist.all_to_all_single(received, outgoing.view(-1), arriving, sizes, group=self._group)
        return received

    # --- on a transformer ----------------------------------------------------------------------

    @contextmanager
    def applied(self, transformer):
        """Run ``transformer``'s forwards this way until the block ends: hooks on its blocks split
        and gather the tokens, its attention processors route self-attention through here."""
        state = transformer.forward_state
        if state.token_parallel is not None:
            raise ValueError("token parallelism is already applied to this transformer")
        shares = _SharedInputs()
        last = len(transformer.blocks) - 1
        for index, block in enumerate(transformer.blocks):
            hook = _TokenShareHook(self, state, shares, first=index == 0, last=index == last)
            HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, _TOKEN_SHARE_HOOK)
        registry = HookRegistry.check_if_exists_or_initialize(transformer)
        registry.invalidate_child_registries_cache()
        state.token_parallel = self
        try:
            yield
        finally:
            state.token_parallel = None
            registry.remove_hook(_TOKEN_SHARE_HOOK, recurse=True)
            registry.invalidate_child_registries_cache()


@dataclass
class _SharedInputs:
    """This process's shares of the per-token inputs every block takes alike (RoPE tables,
    per-frame modulation), made once per forward by block 0."""

    temb: torch.Tensor | None = None
    rotary: tuple | None = None


class _TokenShareHook(ModelHook):
    """On one transformer block: block 0 splits the hidden states, every block takes this
    process's shares of the RoPE tables and of per-token modulation, the last gathers the tokens
    again, so the layers around the blocks see the whole forward."""

    def __init__(self, parallel: TokenParallel, state, shares: _SharedInputs, first: bool, last: bool):
        super().__init__()
        self.parallel, self.state, self.shares, self.first, self.last = parallel, state, shares, first, last

    def pre_forward(self, module, hidden_states, encoder_hidden_states, temb, rotary_emb):
        frames = self.state.num_frames
        if self.first:
            hidden_states = self.parallel.take(hidden_states, frames)
            # [rows, 6, D] is one modulation per row; [rows, S, 6, D] one per token
            self.shares.temb = self.parallel.take(temb, frames) if temb.ndim == 4 else temb
            self.shares.rotary = tuple(self.parallel.take(table, frames) for table in rotary_emb)
        return (hidden_states, encoder_hidden_states, self.shares.temb, self.shares.rotary), {}

    def post_forward(self, module, output):
        if not self.last:
            return output
        self.shares.temb = self.shares.rotary = None
        return self.parallel.gather(output, self.state.num_frames)


def _refuse_mask(mask) -> None:
    if mask is not None:
        raise ValueError("token parallelism runs forwards whose rows see the same context (one item at a time)")


def _attention_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                  enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
    """The forward op of diffusers' templated attention ([B, S, H, D] in and out), with the
    log-sum-exp [B, S, H] of every query's scores when asked (what Ring attention merges by)."""
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    if not return_lse:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale).transpose(1, 2)
    scores = (q.float() @ k.float().transpose(-2, -1)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    lse = scores.logsumexp(dim=-1, keepdim=True)
    out = (scores - lse).exp() @ v.float()
    return out.to(query.dtype).transpose(1, 2), lse.squeeze(-1).transpose(1, 2)
