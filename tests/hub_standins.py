"""Tiny stand-ins of the Hub repositories the presets load, laid out as a Hugging Face cache.

The same classes as the real models in tiny configurations: a umT5 encoder with a word-level
tokenizer, an ``AutoencoderKLWan``, and generator checkpoints written the way the projects
write theirs (original Wan names under ``model.``, an EMA copy with FSDP's wrapper parts, a
PEFT LoRA). Nothing here touches the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from huggingface_hub import constants

from cascade.model.checkpoints import HUB_PRESETS
from cascade.model.transformer import CausalWanTransformer

TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
    text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, rope_max_seq_len=64,
)
TINY_UMT5 = dict(
    vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
    relative_attention_max_distance=16, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
    tie_word_embeddings=False,
)
TINY_VAE = dict(base_dim=4, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
                latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])
WORDS = "a an the red blue cat dog bird runs flies over on in beach snow city at night slowly".split()
REVISION = "0123456789abcdef0123456789abcdef01234567"
WAN_REPO = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"  # text encoder, tokenizer, VAE and configuration (REFERENCES.md)


@dataclass(frozen=True)
class Upstream:
    """A preset as its project publishes and runs it, typed in by hand from REFERENCES.md (the
    checkpoint table; LongLive's LoRA and window notes) and the README's preset table. The
    stand-ins are written where these say and the loaded models are checked against them, so a
    wrong entry in the loader's own table (``HUB_PRESETS``) fails instead of being copied."""

    repo: str
    checkpoint: str
    key: str  # the weights of the checkpoint the project runs
    timesteps: tuple[float, ...]
    shift: float
    warp: bool
    local_window: int | None = None  # this package's convention: sinks on top of a window ending at the block
    sink_frames: int = 0
    rolling_anchor: bool = False  # Rolling Forcing: the sink moves next to the window, cache passes see 21 frames
    max_blocks: int | None = None  # the longest video, where the project has no rule for longer ones
    lora: tuple[str, int, float] | None = None  # file in the repository, rank, alpha
    run_defaults: dict = field(default_factory=lambda: {"blocks": 7, "recache": True})  # 21 latent frames


SELF_FORCING_STEPS = (1000, 750, 500, 250)
UPSTREAM = {
    # global over its 21 trained frames; beyond, its rolling KV cache of local_attn_size 21, no sink
    "self-forcing-1.3b": Upstream("gdhe17/Self-Forcing", "checkpoints/self_forcing_dmd.pt", "generator_ema",
                                  SELF_FORCING_STEPS, 5, True, local_window=21),
    # 21 trained frames; longer videos restart from re-encoded frames, which is not done here
    "causvid-1.3b": Upstream("tianweiy/CausVid", "autoregressive_checkpoint/model.pt", "generator",
                             (1000, 757, 522), 8, False, max_blocks=7),
    # local_attn_size 12 with sink_size 3: the 3 first latent frames + the 9 most recent
    "longlive-1.3b": Upstream("Efficient-Large-Model/LongLive-1.3B", "models/longlive_base.pt", "generator",
                              SELF_FORCING_STEPS, 5, True, local_window=9, sink_frames=3,
                              lora=("models/lora.pt", 256, 256)),
    # 5 blocks denoised jointly at staggered steps + the finished block's t = 0 pass in a forward of
    # its own: a joint cascade W6 s1; attention over 21 latent frames = the first block as sink + 18
    "rolling-forcing-1.3b": Upstream("TencentARC/RollingForcing", "checkpoints/rolling_forcing_dmd.pt",
                                     "generator_ema", (1000, 800, 600, 400, 200), 5, True, local_window=18,
                                     sink_frames=3, rolling_anchor=True, run_defaults={"blocks": 7, "mode": "cascade", "window": 6,
                                                                  "stride": 1, "joint": True, "recache": True}),
}

# diffusers name -> original Wan name: REFERENCES.md's table read backwards (test side only).
_TO_ORIGINAL = (
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    (".attn1.", ".self_attn."), (".attn2.", ".cross_attn."), (".to_out.0.", ".o."), (".to_q.", ".q."),
    (".to_k.", ".k."), (".to_v.", ".v."), ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
    (".norm2.", ".norm__swap."), (".norm3.", ".norm2."), (".norm__swap.", ".norm3."),
)


def original_name(name: str) -> str:
    if name.startswith("proj_out."):
        return "head.head." + name.removeprefix("proj_out.")
    if name == "scale_shift_table":
        return "head.modulation"
    name = name.replace(".scale_shift_table", ".modulation")
    for new, old in _TO_ORIGINAL:
        name = name.replace(new, old)
    return name


def random_generator(seed: int, config: dict = TINY_TRANSFORMER) -> CausalWanTransformer:
    torch.manual_seed(seed)
    model = CausalWanTransformer(**config).eval()
    with torch.no_grad():  # scale_shift_tables start at zero-ish randn/sqrt(dim); give every weight a say
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


def original_state(state: dict[str, torch.Tensor], fsdp: bool) -> dict[str, torch.Tensor]:
    """As the projects save it: ``model.`` + original names (+ FSDP's wrapper parts)."""
    out = {}
    for name, tensor in state.items():
        original = original_name(name)
        if fsdp:
            parts = original.split(".")
            if parts[0] == "blocks":  # FSDP wraps each block, and the whole model
                original = ".".join(parts[:2] + ["_fsdp_wrapped_module"] + parts[2:])
            original = "_fsdp_wrapped_module." + original
        out["model." + original] = tensor.clone()
    return out


def write_checkpoint(path: Path, generator: dict | None = None, ema: dict | None = None) -> Path:
    """A Self-Forcing-style checkpoint: ``generator`` plain, ``generator_ema`` with FSDP parts."""
    data = {}
    if generator is not None:
        data["generator"] = original_state(generator, fsdp=False)
    if ema is not None:
        data["generator_ema"] = original_state(ema, fsdp=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path


def lora_pairs(targets: list[str], shapes: dict, rank: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A [rank, in], B [out, rank]) per targeted weight (diffusers names)."""
    generator = torch.Generator().manual_seed(seed)
    pairs = {}
    for name in sorted(targets):
        out_features, in_features = shapes[name]
        pairs[name] = (torch.randn(rank, in_features, generator=generator) * 0.1,
                       torch.randn(out_features, rank, generator=generator) * 0.1)
    return pairs


def write_peft_lora(path: Path, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Path:
    """As LongLive saves its LoRA: ``{"generator_lora": PEFT state dict}`` over the original model."""
    state = {}
    for name, (a, b) in pairs.items():
        module = original_name(name).removesuffix(".weight")
        state[f"base_model.model.{module}.lora_A.weight"] = a
        state[f"base_model.model.{module}.lora_B.weight"] = b
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"generator_lora": state, "critic_lora": {}}, path)
    return path


class FakeHubCache:
    """``HF_HUB_CACHE`` layout: models--ORG--NAME/{refs/main, snapshots/<rev>/<file>}."""

    def __init__(self, root: Path):
        self.root = root

    def snapshot(self, repo: str) -> Path:
        folder = self.root / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(REVISION)
        return folder / "snapshots" / REVISION

    def path(self, repo: str, filename: str) -> Path:
        path = self.snapshot(repo) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


# the text encoder's shards as the real Wan repository names them (its index lists these five)
UPSTREAM_TEXT_ENCODER_SHARDS = tuple(f"model-{i:05d}-of-00005.safetensors" for i in range(1, 6))


def reshard(folder: Path, names: tuple[str, ...], index_name: str = "model.safetensors.index.json") -> None:
    """The sharded safetensors checkpoint in ``folder`` rewritten as exactly the shards ``names``
    (its tensors dealt out in turn), with its index naming them."""
    from safetensors.torch import load_file, save_file

    index_path = folder / index_name
    index = json.loads(index_path.read_text())
    tensors = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(str(folder / shard)))
        (folder / shard).unlink()
    weight_map = {name: names[i % len(names)] for i, name in enumerate(sorted(tensors))}
    for shard in names:
        save_file({n: tensors[n] for n, s in weight_map.items() if s == shard}, str(folder / shard),
                  metadata={"format": "pt"})
    index_path.write_text(json.dumps({**index, "weight_map": weight_map}, indent=1))


def write_wan_repo(cache: FakeHubCache) -> None:
    """The diffusers-format Wan repository's parts the presets use, in tiny configurations."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    snapshot = cache.snapshot(WAN_REPO)
    cache.path(WAN_REPO, "transformer/config.json").write_text(json.dumps(TINY_TRANSFORMER))
    torch.manual_seed(1)
    encoder = UMT5EncoderModel(UMT5Config(**TINY_UMT5)).eval()
    encoder.save_pretrained(snapshot / "text_encoder", max_shard_size="8KB")
    reshard(snapshot / "text_encoder", UPSTREAM_TEXT_ENCODER_SHARDS)  # sharded, with an index, as the real one
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    PreTrainedTokenizerFast(tokenizer_object=words, **special).save_pretrained(snapshot / "tokenizer")
    cache.path(WAN_REPO, "tokenizer/special_tokens_map.json").write_text(json.dumps(special))
    torch.manual_seed(2)
    AutoencoderKLWan(**TINY_VAE).save_pretrained(snapshot / "vae")


def write_project_repos(cache: FakeHubCache) -> dict[str, dict[str, torch.Tensor]]:
    """Every preset's checkpoint (and LongLive's LoRA) where ``UPSTREAM`` says the project keeps
    it; returns the weights each preset should run (diffusers names, LoRA merged) by preset name."""
    from cascade.model.convert import lora_targets

    expected = {}
    for index, (name, upstream) in enumerate(UPSTREAM.items()):
        plain = random_generator(10 + index).state_dict()
        ema = random_generator(20 + index).state_dict()
        write_checkpoint(cache.path(upstream.repo, upstream.checkpoint), generator=plain, ema=ema)
        weights = dict(ema if upstream.key == "generator_ema" else plain)
        if upstream.lora:
            filename, rank, alpha = upstream.lora
            shapes = {n: t.shape for n, t in weights.items()}
            pairs = lora_pairs(sorted(lora_targets(TINY_TRANSFORMER)), shapes, rank, seed=index)
            write_peft_lora(cache.path(upstream.repo, filename), pairs)
            for weight, (a, b) in pairs.items():
                weights[weight] = weights[weight] + alpha / rank * (b @ a)
        expected[name] = weights
    return expected


def use_offline(monkeypatch, cache: FakeHubCache, pixels: int = 32) -> None:
    """huggingface_hub pointed at ``cache`` and offline (what HF_HOME and HF_HUB_OFFLINE=1 do at
    import), and every preset at ``pixels``×``pixels`` so the stand-ins run in moments."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache.root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for name, preset in HUB_PRESETS.items():
        monkeypatch.setitem(HUB_PRESETS, name, replace(preset, height=pixels, width=pixels))
