"""Traces built from random queries and keys, with no model: any size in a moment, for tests and benchmarks."""

from __future__ import annotations

import numpy as np

from explorer.facts import ModelFacts
from explorer.trace import Positional, QueryKeyLayer, Trace


def synthetic_trace(n_tokens: int, n_layers: int = 2, n_heads: int = 2, kv_heads: int = 1, dim: int = 8, *,
                    sink: float = 4.0, seed: int = 0) -> Trace:
    """A prompt-only trace of random float16 queries and keys. Key 0 is scaled by `sink` so that it draws much
    attention, as a real model's first token does; sink=1 leaves the attention diffuse."""
    rng = np.random.default_rng(seed)
    layers = []
    for _ in range(n_layers):
        query = rng.standard_normal((n_heads, n_tokens, dim)).astype(np.float16)
        key = rng.standard_normal((kv_heads, n_tokens, dim)).astype(np.float16)
        key[:, 0] *= sink
        layers.append(QueryKeyLayer(query=query, key=key, scaling=dim**-0.5))
    return Trace(tokens=[f" t{i}" for i in range(n_tokens)], token_ids=list(range(n_tokens)), n_prompt=n_tokens,
                 layers=layers, steps=[], positional=Positional("none"),
                 model=ModelFacts(name="synthetic", layers=n_layers, heads=n_heads, kv_heads=kv_heads))


def smollm2_shaped_trace(n_tokens: int, *, sink: float = 4.0, seed: int = 0) -> Trace:
    """A synthetic trace of the default model's attention shapes: 30 layers, 9 query heads, 3 key/value heads,
    64 dimensions a head."""
    return synthetic_trace(n_tokens, n_layers=30, n_heads=9, kv_heads=3, dim=64, sink=sink, seed=seed)
