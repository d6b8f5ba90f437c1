"""How a trace keeps each layer's attention: its queries and keys, from which a head's rows are computed when a view
asks (QueryKeyLayer: memory grows with T, not T²), or the weights themselves (WeightsLayer), and the same with the
layer's positional term taken out (`without_position`, for `trace.attention(..., kind="no_position")`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from .rotary import unrotate

if TYPE_CHECKING:
    from .trace import Positional


def _softmax_rows(scores: np.ndarray) -> np.ndarray:
    scores = scores - scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores


@dataclass
class QueryKeyLayer:
    """One layer kept as queries [H, T, d] and keys [H_kv, T, d] after rotary; rows are computed on demand.

    The recomputation is the one transformers' eager attention does: softmax(q·kᵀ·scaling + mask), with the
    causal mask, the sliding window or chunk, the logit soft-cap and learned sinks where the layer has them.
    A sink (GPT-OSS) is one more logit per head in every row's softmax, over no key: the row's weights then sum
    to 1 minus the sink's share (`sink_share`).
    """

    query: np.ndarray
    key: np.ndarray
    scaling: float
    sliding_window: int | None = None
    softcap: float | None = None
    value: np.ndarray | None = None  # kept only when asked for (the attention-math view uses it)
    sinks: np.ndarray | None = None  # float32 [H]: learned sink logits
    chunk: int | None = None  # chunked attention (Llama 4): a query sees the keys of its own chunk only

    @property
    def n_heads(self) -> int:
        return self.query.shape[0]

    def visible(self, start: int, stop: int) -> np.ndarray:
        """Which keys each query position start..stop-1 may see: bool [stop-start, T] (causal, sliding window)."""
        query_pos = np.arange(start, stop)[:, None]
        key_pos = np.arange(self.key.shape[1])[None, :]
        allowed = key_pos <= query_pos
        if self.sliding_window:
            allowed &= query_pos - key_pos < self.sliding_window
        if self.chunk:
            allowed &= query_pos // self.chunk == key_pos // self.chunk
        return allowed

    def capped(self, scores: np.ndarray) -> np.ndarray:
        """The layer's logit soft-cap, cap·tanh(s/cap), where it has one."""
        if not self.softcap:
            return scores
        cap = scores.dtype.type(self.softcap)
        return cap * np.tanh(scores / cap)

    def rows(self, head: int, start: int, stop: int) -> np.ndarray:
        """Attention of query positions start..stop-1 over all keys, float32 [stop-start, T]."""
        group = self.n_heads // self.key.shape[0]
        q = self.query[head, start:stop].astype(np.float32)
        k = self.key[head // group, :stop].astype(np.float32)  # causal: no query here sees a key past stop-1
        scores = self.capped((q @ k.T) * np.float32(self.scaling))
        scores = np.where(self.visible(start, stop)[:, :stop], scores, np.float32(-np.inf))
        return self._widened(self._softmax(scores, None if self.sinks is None else self.sinks[head]))

    def _softmax(self, scores: np.ndarray, sink) -> np.ndarray:
        """Softmax of the last axis; with a sink logit (a number, or [H] for [H, n, keys]) in the sum but not out."""
        if sink is None:
            return _softmax_rows(scores)
        sink = np.asarray(sink, dtype=np.float32)
        if sink.ndim:  # one sink a head, for scores [H, n, keys]
            sink = sink[:, None, None]
        top = np.maximum(scores.max(axis=-1, keepdims=True), sink)
        weights = np.exp(scores - top)
        return weights / (weights.sum(axis=-1, keepdims=True) + np.exp(sink - top))

    def sink_share(self, head: int, start: int, stop: int) -> np.ndarray:
        """The attention each query start..stop-1 gives the head's sink (no key), float32 [stop-start]; 0 without."""
        if self.sinks is None:
            return np.zeros(stop - start, dtype=np.float32)
        return 1 - self.rows(head, start, stop).sum(-1)

    def heads_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 of every head at once, float32 [H, stop-start, T]: one batched product, not H."""
        group = self.n_heads // self.key.shape[0]
        q = self.query[:, start:stop].astype(np.float32)
        k = np.repeat(self.key[:, :stop].astype(np.float32), group, axis=0)
        scores = self.capped(np.matmul(q, k.transpose(0, 2, 1)) * np.float32(self.scaling))
        scores = np.where(self.visible(start, stop)[None, :, :stop], scores, np.float32(-np.inf))
        return self._widened(self._softmax(scores, self.sinks))

    def _widened(self, rows: np.ndarray) -> np.ndarray:
        """Rows over keys 0..stop-1 padded with zeros to all T keys (the weights there are 0 anyway)."""
        t, have = self.key.shape[1], rows.shape[-1]
        if have == t:
            return rows
        out = np.zeros((*rows.shape[:-1], t), dtype=np.float32)
        out[..., :have] = rows
        return out

    def tensors(self) -> dict[str, np.ndarray]:
        out = {"query": self.query, "key": self.key}
        if self.value is not None:
            out["value"] = self.value
        if self.sinks is not None:
            out["sinks"] = self.sinks
        return out

    def meta(self) -> dict:
        return {
            "kind": "query_key",
            "scaling": self.scaling,
            "sliding_window": self.sliding_window,
            "softcap": self.softcap,
            "chunk": self.chunk,
        }


@dataclass
class WeightsLayer:
    """One layer kept as its attention weights: row i (length i+1) of every head, packed one after another."""

    packed: np.ndarray  # [H, T*(T+1)/2]

    @property
    def n_heads(self) -> int:
        return self.packed.shape[0]

    @property
    def n_tokens(self) -> int:
        return int((np.sqrt(8 * self.packed.shape[1] + 1) - 1) // 2)

    def rows(self, head: int, start: int, stop: int) -> np.ndarray:
        n = self.n_tokens
        out = np.zeros((stop - start, n), dtype=np.float32)
        for r, i in enumerate(range(start, stop)):
            offset = i * (i + 1) // 2
            out[r, : i + 1] = self.packed[head, offset : offset + i + 1]
        return out

    def heads_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 of every head, float32 [H, stop-start, T]."""
        return np.stack([self.rows(h, start, stop) for h in range(self.n_heads)])

    def tensors(self) -> dict[str, np.ndarray]:
        return {"weights": self.packed}

    def meta(self) -> dict:
        return {"kind": "weights"}


AttentionLayer = QueryKeyLayer | WeightsLayer


class _AlibiFree:
    """A WeightsLayer with each head's ALiBi bias slope·j taken out: w_ij·e^(-slope·j), renormalised per row
    (exact: the weights are softmax(s_ij + slope·j), so this is softmax(s_ij))."""

    def __init__(self, layer: WeightsLayer, slopes: np.ndarray):
        self.layer, self.slopes = layer, np.asarray(slopes, dtype=np.float32)
        self.n_heads = layer.n_heads

    def rows(self, head: int, start: int, stop: int) -> np.ndarray:
        weights = self.layer.rows(head, start, stop)
        keys = np.arange(weights.shape[1], dtype=np.float32)
        visible = keys[None, :] <= np.arange(start, stop)[:, None]
        with np.errstate(divide="ignore"):
            logits = np.where(visible, np.log(weights) - self.slopes[head] * keys[None, :], -np.inf)
        return np.where(visible, _softmax_rows(logits), np.float32(0)).astype(np.float32)

    def heads_rows(self, start: int, stop: int) -> np.ndarray:
        return np.stack([self.rows(h, start, stop) for h in range(self.n_heads)])


def without_position(store: AttentionLayer, positional: Positional, layer: int) -> AttentionLayer:
    """What `trace.attention(..., kind="no_position")` reads for one layer; ValueError where it has no meaning."""
    record = positional.layer(layer)
    kind = record["kind"]
    if kind == "rotary" and isinstance(store, QueryKeyLayer):
        cos, sin = positional.rotary_table(layer)
        convention = record.get("convention", "half")
        return replace(store, query=unrotate(store.query, cos, sin, convention),
                       key=unrotate(store.key, cos, sin, convention))
    if kind == "alibi" and isinstance(store, WeightsLayer) and record.get("slopes") is not None:
        return _AlibiFree(store, record["slopes"])
    if kind == "none":
        return store  # NoPE: no positional term in this layer's scores
    raise ValueError(f"layer {layer} has no positional term of its own to take out ({kind} positions"
                     + (": they are added to the input, before the first layer)" if kind == "absolute" else ")"))
