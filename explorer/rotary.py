"""Rotary position embeddings undone: numpy only, so the view side can take a head's positional term out."""

from __future__ import annotations

import numpy as np


def unrotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, convention: str = "half") -> np.ndarray:
    """x [..., T, d] rotated by cos, sin [T, r] (rotate-half layout: each frequency twice) back to before the
    rotation, in its first r dims. "half" pairs dims i and i + r/2 (Llama, NeoX); "interleaved" pairs 2i and 2i+1
    (GPT-J, Llama 4). The tables' own scale s (YaRN's attention factor) is divided out: rotating there and back
    gives s²."""
    r = cos.shape[-1]
    scale = float(cos[0, 0]) ** 2 + float(sin[0, 0]) ** 2 or 1.0  # s² = (s·cos θ)² + (s·sin θ)²
    c, s = cos[:, : r // 2].astype(np.float32), sin[:, : r // 2].astype(np.float32)
    out = x.astype(np.float32)  # a copy
    if convention == "half":
        a, b = x[..., : r // 2].astype(np.float32), x[..., r // 2 : r].astype(np.float32)
        out[..., : r // 2] = a * c + b * s
        out[..., r // 2 : r] = b * c - a * s
    elif convention == "interleaved":
        a, b = x[..., 0:r:2].astype(np.float32), x[..., 1:r:2].astype(np.float32)
        out[..., 0:r:2] = a * c + b * s
        out[..., 1:r:2] = b * c - a * s
    else:
        raise ValueError(f"convention must be 'half' or 'interleaved', not {convention!r}")
    out[..., :r] /= np.float32(scale)
    return out
