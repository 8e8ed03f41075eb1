"""The block-causal model: transformer, KV cache, text encoders, presets."""

from .kv_cache import KVCache
from .transformer import CausalWanTransformer

__all__ = ["CausalWanTransformer", "KVCache"]
