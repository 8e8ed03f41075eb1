"""Text encoder of the bundled tiny model.

Wan conditions its transformer on umT5 outputs: a tensor [B, L, text_dim] whose padded token
positions are exactly zero. The tiny model is conditioned the same way, by a word-level
tokenizer over a small caption vocabulary and a small transformer encoder, so that the same
CausalWanTransformer code runs on both.

Unknown words are never dropped silently: the tokenizer leaves them out of the ids but returns
them, so the app can tell the user which words the tiny model does not understand.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WORD_PATTERN = re.compile(r"[a-z]+")
PAD_ID = 0

TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "text_encoder.safetensors"
CONFIG_FILE = "text_encoder_config.json"


def split_words(text: str) -> list[str]:
    """Lower-case alphabetic words of `text`; digits and punctuation separate words."""
    return WORD_PATTERN.findall(text.lower())


@dataclass
class TokenizedText:
    """A batch of tokenized prompts.

    ids: [B, L] long, pad id 0; mask: [B, L] bool, True at real tokens; unknown: per prompt,
    the words not in the vocabulary in the order they occur; truncated: per prompt, whether
    known words beyond max_length were cut off.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    unknown: list[list[str]]
    truncated: list[bool]


class WordTokenizer:
    """Maps words to ids: 0 is padding, vocabulary word i gets id i + 1."""

    def __init__(self, vocab: list[str], max_length: int):
        vocab = list(vocab)
        if not vocab:
            raise ValueError("vocab must not be empty")
        not_words = [w for w in vocab if not WORD_PATTERN.fullmatch(w)]
        if not_words:
            raise ValueError(f"vocab entries must be lower-case words [a-z]+, got {not_words}")
        if len(set(vocab)) != len(vocab):
            duplicates = sorted({w for w in vocab if vocab.count(w) > 1})
            raise ValueError(f"vocab has duplicate words: {duplicates}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.vocab = vocab
        self.max_length = max_length
        self._ids = {word: index + 1 for index, word in enumerate(vocab)}

    @property
    def vocab_size(self) -> int:
        """Number of ids including padding: the embedding table size an encoder needs."""
        return len(self.vocab) + 1

    def encode(self, texts: list[str]) -> TokenizedText:
        """Tokenize a batch, always padded to max_length so a prompt's ids never depend on
        the other prompts in the batch."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of prompts; wrap a single prompt as [prompt]")
        ids = torch.full((len(texts), self.max_length), PAD_ID, dtype=torch.long)
        unknown, truncated = [], []
        for row, text in enumerate(texts):
            words = split_words(text)
            known = [self._ids[w] for w in words if w in self._ids]
            unknown.append([w for w in words if w not in self._ids])
            truncated.append(len(known) > self.max_length)
            known = known[: self.max_length]
            ids[row, : len(known)] = torch.tensor(known, dtype=torch.long)
        return TokenizedText(ids=ids, mask=ids != PAD_ID, unknown=unknown, truncated=truncated)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary and max_length as JSON."""
        data = {"vocab": self.vocab, "max_length": self.max_length}
        Path(path).write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        data = json.loads(Path(path).read_text())
        return cls(vocab=data["vocab"], max_length=data["max_length"])


class ToyTextEncoder(nn.Module):
    """Token + learned position embeddings and a small pre-norm transformer encoder.

    Output [B, L, dim] with padded positions exactly zero, like Wan's zero-padded umT5 context,
    so the video transformer's cross-attention sees the same kind of input for both models.
    Dropout is off: the model is tiny and generation must be deterministic.
    """

    def __init__(
        self, vocab_size: int, dim: int, max_length: int, num_layers: int = 2, num_heads: int = 4
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.config = {
            "vocab_size": vocab_size,
            "dim": dim,
            "max_length": max_length,
            "num_layers": num_layers,
            "num_heads": num_heads,
        }
        self.token_embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.position_embedding = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, num_heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False
        )

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids [B, L] long and mask [B, L] bool (True = real token), L <= max_length."""
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise ValueError(
                f"ids and mask must both be [B, L], got {tuple(ids.shape)} and {tuple(mask.shape)}"
            )
        max_length = self.config["max_length"]
        if ids.shape[1] > max_length:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_length {max_length}")
        mask = mask.bool()
        hidden = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        # A prompt with no known word would mask every key, and softmax over nothing is NaN
        # (also in the gradients). Such rows attend to their padding instead; their output
        # is zeroed below, so nothing of it reaches the video model.
        key_padding = ~mask & mask.any(dim=1, keepdim=True)
        hidden = self.encoder(hidden, src_key_padding_mask=key_padding)
        return hidden.masked_fill(~mask.unsqueeze(-1), 0.0)


class TextEncoder:
    """Tokenizer and encoder together: prompts in, conditioning tensor out."""

    def __init__(self, tokenizer: WordTokenizer, encoder: ToyTextEncoder):
        vocab_size, max_length = encoder.config["vocab_size"], encoder.config["max_length"]
        if vocab_size != tokenizer.vocab_size:
            raise ValueError(
                f"encoder vocab_size {vocab_size} != tokenizer vocab_size {tokenizer.vocab_size}"
            )
        if max_length < tokenizer.max_length:
            raise ValueError(
                f"encoder max_length {max_length} < tokenizer max_length {tokenizer.max_length}"
            )
        self.tokenizer = tokenizer
        self.encoder = encoder

    @classmethod
    def from_folder(cls, folder: str | Path) -> TextEncoder:
        return cls(*load_text_encoder(folder))

    def save(self, folder: str | Path) -> None:
        save_text_encoder(folder, self.tokenizer, self.encoder)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, list[list[str]]]:
        """(embeddings [B, L, dim] on the encoder's device, unknown words per prompt)."""
        tokens = self.tokenizer.encode(prompts)
        device = self.encoder.token_embedding.weight.device
        embeddings = self.encoder(tokens.ids.to(device), tokens.mask.to(device))
        return embeddings, tokens.unknown


def save_text_encoder(
    folder: str | Path, tokenizer: WordTokenizer, encoder: ToyTextEncoder
) -> None:
    """Write tokenizer.json, text_encoder_config.json and text_encoder.safetensors to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(folder / TOKENIZER_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(encoder.config, indent=1) + "\n")
    state = encoder.state_dict()
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    save_file(weights, str(folder / WEIGHTS_FILE))


def load_text_encoder(folder: str | Path) -> tuple[WordTokenizer, ToyTextEncoder]:
    """Read what `save_text_encoder` wrote; the encoder comes back on CPU in eval mode."""
    folder = Path(folder)
    files = (TOKENIZER_FILE, CONFIG_FILE, WEIGHTS_FILE)
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"text encoder folder {folder} lacks {', '.join(missing)}")
    tokenizer = WordTokenizer.load(folder / TOKENIZER_FILE)
    encoder = ToyTextEncoder(**json.loads((folder / CONFIG_FILE).read_text()))
    encoder.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return tokenizer, encoder.eval()
