"""Attention matrices made small enough to draw: windows, max-pooled overviews, uint8 colours, head statistics.

Pure numpy over a Trace. Heads are read in chunks of rows (`trace.attention_rows`), so a 2,048-token head
never needs more than a few MB at once and no list of full T×T matrices is ever built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

CHUNK_ROWS = 512  # rows of one head read at a time: 512 × 2,048 float32 = 4 MB
TINY = np.float32(np.finfo(np.float32).tiny)


def pool_factor(n: int, target: int) -> int:
    """The smallest block size that brings n cells down to at most `target`."""
    return max(1, math.ceil(n / max(1, target)))


def max_pool(matrix: np.ndarray, factor: int) -> np.ndarray:
    """Block maximum of a 2-D array over factor × factor blocks (edges padded with zeros), [ceil(r/f), ceil(c/f)].

    The maximum, not a sample or a mean, so a one-pixel sink column or a thin stripe stays visible.
    """
    if factor == 1:
        return np.asarray(matrix, dtype=np.float32)
    r, c = matrix.shape
    nr, nc = math.ceil(r / factor), math.ceil(c / factor)
    padded = np.zeros((nr * factor, nc * factor), dtype=np.float32)
    padded[:r, :c] = matrix
    return padded.reshape(nr, factor, nc, factor).max(axis=(1, 3))


def max_abs_pool(matrix: np.ndarray, factor: int) -> np.ndarray:
    """Block value of largest size of a signed 2-D array (a difference), sign kept: max_pool of its positive and of
    its negative part, whichever is larger in each block, so a one-pixel change of either sign stays visible."""
    if factor == 1:
        return np.asarray(matrix, dtype=np.float32)
    high, low = max_pool(matrix, factor), -max_pool(-np.asarray(matrix, dtype=np.float32), factor)
    return np.where(high >= -low, high, low)


def quantise_signed(values: np.ndarray, scale: float, log_decades: float | None = None) -> np.ndarray:
    """Signed values (a difference) as colour indices of a diverging scale (uint8): 0 is -scale, 128 is 0, 255 is
    +scale. Linear: 128 + round(127 · v / scale). Log (log_decades=d): the size |v| as on the log scale over the d
    decades below `scale`, the sign kept; sizes below scale·10^-d map to 128."""
    v = np.asarray(values, dtype=np.float32)
    scale = float(scale) if scale > 0 else 1.0
    size = np.abs(v) / np.float32(scale)
    if log_decades:
        with np.errstate(divide="ignore"):
            size = 1.0 + np.log10(np.maximum(size, TINY)) / np.float32(log_decades)
    return (128 + np.sign(v) * np.rint(127 * np.clip(size, 0, 1))).astype(np.uint8)


def quantise(weights: np.ndarray, scale: float, log_decades: float | None = None) -> np.ndarray:
    """Weights as colour indices 0..255 (uint8).

    Linear: round(255 · w / scale). Log (log_decades=d): the d decades below `scale` spread over 1..255,
    round(255 · (1 + log10(w / scale) / d)), clipped; weights below scale·10^-d (and zeros) map to 0.
    """
    w = np.asarray(weights, dtype=np.float32)
    scale = float(scale) if scale > 0 else 1.0
    if not log_decades:
        q = np.rint(w * np.float32(255.0 / scale))
    else:
        with np.errstate(divide="ignore"):
            q = np.rint(255.0 * (1.0 + np.log10(np.maximum(w, TINY) / np.float32(scale)) / np.float32(log_decades)))
    return np.clip(q, 0, 255).astype(np.uint8)


Rows = Callable[[int, int], np.ndarray]  # rows(start, stop): rows start..stop-1 of a T×T matrix, float32 [n, T]


def head_rows(trace, layer: int, head: int | None, kind: str = "raw") -> Rows:
    """The rows of one head (head None: the layer's mean): attention weights ("raw") or value-weighted ("norm")."""
    return lambda start, stop: trace.attention_rows(layer, head, start, stop, kind=kind)


def row_chunks(trace, layer: int, head: int | None, start: int = 0, stop: int | None = None,
               chunk: int = CHUNK_ROWS, kind: str = "raw") -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows [n, T]) of one head, `chunk` rows at a time."""
    stop = trace.n_tokens if stop is None else stop
    for s in range(start, stop, chunk):
        yield s, trace.attention_rows(layer, head, s, min(stop, s + chunk), kind=kind)


def window(trace, layer: int, head: int | None, row_start: int, key_start: int, size: int,
           kind: str = "raw") -> np.ndarray:
    """Weights of queries row_start.. over keys key_start.., float32 [≤size, ≤size] (clipped at the end)."""
    return window_of(head_rows(trace, layer, head, kind), trace.n_tokens, row_start, key_start, size)


def window_of(rows: Rows, t: int, row_start: int, key_start: int, size: int) -> np.ndarray:
    """The size × size window at (row_start, key_start) of a T×T matrix given by its rows, clipped at the end."""
    block = rows(row_start, min(t, row_start + size))
    return np.ascontiguousarray(block[:, key_start : min(t, key_start + size)])


def pooled_head(trace, layer: int, head: int | None, factor: int, kind: str = "raw") -> np.ndarray:
    """The whole T×T head max-pooled by `factor`, read in chunks of rows, float32 [ceil(T/f), ceil(T/f)]."""
    return pooled(head_rows(trace, layer, head, kind), trace.n_tokens, factor)


def pooled(rows: Rows, t: int, factor: int, pool: Callable[[np.ndarray, int], np.ndarray] = max_pool) -> np.ndarray:
    """A T×T matrix given by its rows, max-pooled by `factor` a chunk of rows at a time, [ceil(T/f), ceil(T/f)]
    (`pool`: max_abs_pool for a signed matrix)."""
    n = math.ceil(t / factor)
    out = np.zeros((n, n), dtype=np.float32)
    chunk = factor * max(1, CHUNK_ROWS // factor)  # a multiple of the block size, so blocks never straddle chunks
    for s in range(0, t, chunk):
        block = pool(rows(s, min(t, s + chunk)), factor)
        out[s // factor : s // factor + block.shape[0]] = block
    return out


@dataclass
class HeadStats:
    """Per-head summary over query rows 1..T-1 (row 0 can only attend to itself), arrays [layers, heads]."""

    entropy: np.ndarray  # mean entropy of a row, in nats
    previous: np.ndarray  # mean weight on the token just before
    first: np.ndarray  # mean weight on the first token (the "attention sink")

    NAMES = ("entropy", "previous", "first")

    def table(self) -> list[dict]:
        """One dict per head: layer, head and the three statistics (None where undefined)."""
        out = []
        for layer in range(self.entropy.shape[0]):
            for head in range(self.entropy.shape[1]):
                row = {"layer": layer, "head": head}
                for name in self.NAMES:
                    v = float(getattr(self, name)[layer, head])
                    row[name] = None if math.isnan(v) else v
                out.append(row)
        return out


def _chunk_sums(rows: np.ndarray, first_row: int) -> tuple[float, float, float]:
    """Sums over the rows of one chunk (rows ≥ 1 only) of: entropy, weight on previous token, weight on token 0."""
    skip = 1 if first_row == 0 else 0
    p = rows[skip:]
    if not len(p):
        return 0.0, 0.0, 0.0
    idx = np.arange(first_row + skip, first_row + skip + len(p))
    p = p[:, : idx[-1] + 1]  # causal: the keys after the last row are all 0
    entropy = -float(np.einsum("ij,ij->", p, np.log(np.maximum(p, TINY))))
    return entropy, float(p[np.arange(len(p)), idx - 1].sum()), float(p[:, 0].sum())


def thumbnails_and_stats(trace, size: int = 48) -> tuple[np.ndarray, HeadStats]:
    """Every head max-pooled to at most size × size (float32 [L, H, n, n]) and its HeadStats, in one pass per head."""
    t, n_layers, n_heads = trace.n_tokens, trace.n_layers, trace.n_heads
    factor = pool_factor(t, size)
    n = math.ceil(t / factor)
    thumbs = np.zeros((n_layers, n_heads, n, n), dtype=np.float32)
    sums = np.zeros((3, n_layers, n_heads))
    chunk = factor * max(1, CHUNK_ROWS // factor)
    for layer in range(n_layers):
        for head in range(n_heads):
            for s, rows in row_chunks(trace, layer, head, chunk=chunk):
                block = max_pool(rows, factor)
                thumbs[layer, head, s // factor : s // factor + block.shape[0]] = block
                sums[:, layer, head] += _chunk_sums(rows, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (sums / (t - 1)) if t > 1 else np.full_like(sums, np.nan)
    return thumbs, HeadStats(*means.astype(np.float32))
