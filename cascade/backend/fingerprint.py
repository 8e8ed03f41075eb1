"""Weight fingerprints: do two replicas (or two prompt embeddings) hold the same numbers?

Replicas of the same weights agree to float64 rounding on any device; weights from another
seed, file or dtype do not. Cheap enough to compare at every pool start, without moving weights.
"""

from __future__ import annotations

import torch


def _sums(t: torch.Tensor) -> tuple[float, float]:
    t = t.detach().double()
    return t.sum().item(), t.square().sum().item()


def weight_fingerprint(module: torch.nn.Module) -> list[tuple[str, float, float]]:
    """Name, sum and sum of squares (float64) of every tensor of a model's state; one pass over
    the weights, so callers compute it once per model object."""
    return [(name, *_sums(tensor)) for name, tensor in module.state_dict().items()]


def same_fingerprint(a, b) -> bool:
    """Equal names, and sums equal up to float64 rounding of reductions in another order."""
    if len(a) != len(b):
        return False
    for (name_a, *sums_a), (name_b, *sums_b) in zip(a, b):
        if name_a != name_b:
            return False
        for x, y in zip(sums_a, sums_b):
            if abs(x - y) > 1e-6 * max(1.0, abs(x), abs(y)):
                return False
    return True


def tensor_fingerprint(t: torch.Tensor) -> list[tuple[str, float, float]]:
    return [(str(tuple(t.shape)), *_sums(t))]
