"""Wan2.1's text encoder (umT5) and VAE (``AutoencoderKLWan``) as the block-causal models use them.

- Prompts are tokenized to exactly 512 tokens and the encoder's outputs at padding positions are
  zeroed, as the checkpoints were trained: the transformer cross-attends over all 512 positions.
- The VAE decodes a whole latent video at once, or block by block as blocks finish, carrying its
  causal feature cache from one block to the next, with the same frames as a whole decode.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

from .base import decode_pixels
from .checkpoints import PROMPT_LENGTH

# umT5-XXL's encoder as Wan2.1 uses it (text_encoder/config.json of the Wan repository).
UMT5_XXL = dict(
    vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    dense_act_fn="gelu_new", is_gated_act=True, layer_norm_epsilon=1e-6, tie_word_embeddings=False,
)


def clean_prompt(prompt: str) -> str:
    """HTML entities resolved and whitespace collapsed, as Wan cleans prompts before tokenizing
    (less its ftfy pass, which repairs mis-decoded text)."""
    return " ".join(html.unescape(html.unescape(prompt)).split())


class UMT5TextEncoder:
    """A tokenizer and umT5 encoder: prompts in, [B, 512, 4096] conditioning out (padding zeroed).

    The encoder may sit on another device than the transformer (the CPU, when GPU memory is
    short); its output is moved to ``output_device`` in ``output_dtype``."""

    def __init__(self, tokenizer, encoder, output_device, output_dtype: torch.dtype, max_length: int = PROMPT_LENGTH):
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.output_device = torch.device(output_device)
        self.output_dtype = output_dtype
        self.max_length = max_length

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, list[list[str]]]:
        tokens = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", max_length=self.max_length,
                                truncation=True, add_special_tokens=True, return_attention_mask=True,
                                return_tensors="pt")
        mask = tokens.attention_mask.to(self.device)
        hidden = self.encoder(input_ids=tokens.input_ids.to(self.device), attention_mask=mask).last_hidden_state
        hidden = hidden * mask[..., None].to(hidden.dtype)
        # A subword tokenizer knows every word: there are none to report.
        return hidden.to(self.output_device, self.output_dtype), [[] for _ in prompts]


def load_text_encoder(encoder_folder: Path, tokenizer_folder: Path, device, dtype: torch.dtype,
                      output_device, output_dtype: torch.dtype) -> UMT5TextEncoder:
    from transformers import AutoTokenizer, UMT5EncoderModel  # deferred: transformers is slow to import

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    encoder = UMT5EncoderModel.from_pretrained(encoder_folder, dtype=dtype, device_map=torch.device(device))
    return UMT5TextEncoder(tokenizer, encoder.eval(), output_device, output_dtype)


def random_text_encoder(config: dict, device, dtype: torch.dtype, seed: int = 0) -> UMT5TextEncoder:
    """A umT5 encoder of ``config`` with random weights and a tokenizer over its whole vocabulary,
    for timing the text encoding at full size without a download."""
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        encoder = UMT5EncoderModel._from_config(UMT5Config(**config), dtype=dtype).eval()
    return UMT5TextEncoder(HashingTokenizer(config["vocab_size"]), encoder, device, dtype)


class HashingTokenizer:
    """Words to ids by a stable hash into a vocabulary: a tokenizer for random-weight encoders."""

    PAD, EOS = 0, 1

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, prompts: list[str], max_length: int, **_) -> SimpleNamespace:
        ids = torch.full((len(prompts), max_length), self.PAD, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = [2 + int.from_bytes(w.encode()[:7].ljust(7, b"\0"), "little") % (self.vocab_size - 2)
                     for w in prompt.split()][: max_length - 1] + [self.EOS]
            ids[row, : len(words)] = torch.tensor(words)
        return SimpleNamespace(input_ids=ids, attention_mask=(ids != self.PAD).long())


class WanVideoDecoder:
    """Wan latents [1, 16, F, H, W] (as the transformer makes them) -> uint8 frames [T, 8H, 8W, 3].

    Called on a whole latent video, it decodes it at once. ``new_stream()`` gives a decoder for
    one video fed its blocks in order; it keeps the VAE's causal feature cache (each causal 3D
    convolution's last input frames) between blocks, so its frames equal the whole decode's. The
    first latent frame gives one video frame, every later one four.
    """

    def __init__(self, vae: AutoencoderKLWan):
        if vae.config.patch_size is not None:
            raise ValueError("only the Wan2.1 VAE (no patch_size) is supported here")
        self.vae = vae
        shape = (1, vae.config.z_dim, 1, 1, 1)
        self.mean = torch.tensor(vae.config.latents_mean).view(shape)
        self.std = torch.tensor(vae.config.latents_std).view(shape)
        self.convolutions = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())

    def unscale(self, latents: torch.Tensor) -> torch.Tensor:
        """The transformer works on normalised latents; the VAE on its own scale."""
        param = next(self.vae.parameters())
        latents = latents.to(param.device, torch.float32)
        z = latents * self.std.to(latents.device) + self.mean.to(latents.device)
        return z.to(param.dtype)

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        return decode_pixels(self.vae.decode(self.unscale(latents)).sample)

    def new_stream(self) -> Callable[[torch.Tensor], np.ndarray]:
        return _BlockStream(self)


class _BlockStream:
    """One video's block-by-block decode; its feature cache lives here, not on the shared VAE."""

    def __init__(self, decoder: WanVideoDecoder):
        self.decoder = decoder
        self.feature_cache: list = [None] * decoder.convolutions
        self.frames_done = 0

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.decoder.vae
        x = vae.post_quant_conv(self.decoder.unscale(latents))
        frames = []
        for i in range(x.shape[2]):
            frames.append(vae.decoder(x[:, :, i:i + 1], feat_cache=self.feature_cache, feat_idx=[0],
                                      first_chunk=self.frames_done == 0))
            self.frames_done += 1
        return decode_pixels(torch.cat(frames, dim=2).clamp(-1, 1))


def load_vae(folder: Path, device, dtype: torch.dtype) -> WanVideoDecoder:
    vae = AutoencoderKLWan.from_pretrained(folder, torch_dtype=dtype)
    return WanVideoDecoder(vae.to(device).eval())


def random_vae(device, dtype: torch.dtype, config: dict | None = None, seed: int = 0) -> WanVideoDecoder:
    """``AutoencoderKLWan`` (default: Wan2.1's configuration) with random weights, for timing."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(**(config or {}))
    return WanVideoDecoder(vae.to(device=device, dtype=dtype).eval())
