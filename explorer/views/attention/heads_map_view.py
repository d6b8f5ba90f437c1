"""Every head of every layer at once: small max-pooled thumbnails on one canvas, with per-head statistics.

Sent once (and again only when the colour scale changes): `thumbs`, layers × heads × n × n uint8 (n ≤ 48), each
thumbnail scaled to its own largest weight; `stats`, three numbers a head. Clicking a thumbnail sets the shared
selection's layer and head, so a heatmap on the same Selection opens that head.
"""

from __future__ import annotations

import anywidget
import numpy as np
import traitlets

from . import attention_data as ad
from .. import frontend
from ..selection import ClampsLayerHead, FollowsSelection, Selection

STAT_LABELS = {
    "entropy": "mean entropy of a row (nats)",
    "previous": "mean weight on the previous token",
    "first": "mean weight on the first token",
}


class HeadsMapView(FollowsSelection, ClampsLayerHead, anywidget.AnyWidget):
    """Thumbnails of all layers × heads with hover statistics, a sortable table and click-to-select."""

    _esm = frontend.module("attention/heads_map.js")

    n_layers = traitlets.Int(0).tag(sync=True)
    n_heads = traitlets.Int(0).tag(sync=True)
    n_tokens = traitlets.Int(0).tag(sync=True)
    thumb_n = traitlets.Int(0).tag(sync=True)  # cells a side of one thumbnail
    thumb_factor = traitlets.Int(1).tag(sync=True)  # tokens per cell, a side
    thumb_px = traitlets.Int(48).tag(sync=True)  # drawn size of one thumbnail
    thumbs = traitlets.Bytes(b"").tag(sync=True)  # uint8 [n_layers, n_heads, thumb_n, thumb_n]
    log_scale = traitlets.Bool(False).tag(sync=True)
    log_decades = traitlets.Float(3.0).tag(sync=True)
    stats = traitlets.Dict().tag(sync=True)  # name -> [n_layers][n_heads] (None where undefined)
    stat_labels = traitlets.Dict(STAT_LABELS).tag(sync=True)
    colour_by = traitlets.Unicode("first").tag(sync=True)  # a stats name, or "" for none
    layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(None, allow_none=True).tag(sync=True)

    def __init__(self, trace, selection: Selection | None = None, thumb_px: int = 48, log_scale: bool = True,
                 **kwargs):
        self.trace = trace
        self.selection = selection if selection is not None else Selection()
        self.pooled, self.head_stats = ad.thumbnails_and_stats(trace, size=thumb_px)
        table = {name: np.where(np.isnan(a), None, np.round(a.astype(float), 6)).tolist()
                 for name, a in vars(self.head_stats).items()}
        super().__init__(
            n_layers=trace.n_layers, n_heads=trace.n_heads, n_tokens=trace.n_tokens, thumb_n=self.pooled.shape[-1],
            thumb_factor=ad.pool_factor(trace.n_tokens, thumb_px), thumb_px=thumb_px, log_scale=log_scale,
            stats=table, **kwargs,
        )
        self._follow_selection()
        self.follow(self.selection, self._follow_selection, ["layer", "head"])
        self.observe(self._update_selection, ["layer", "head"])
        self.observe(lambda _: self._send_thumbs(), ["log_scale", "log_decades"])
        self._send_thumbs()

    def _follow_selection(self, _change=None) -> None:
        with self.hold_trait_notifications():
            self.layer, self.head = self.selection.layer, self.selection.head

    def _update_selection(self, _change=None) -> None:
        """A click sets layer and head together: pass them on together, so a heatmap computes the pair once."""
        with self.selection.hold_trait_notifications():
            self.selection.layer, self.selection.head = self.layer, self.head

    def thumbnail_bytes(self) -> np.ndarray:
        """Every thumbnail quantised against its own largest weight, uint8 [L, H, n, n]."""
        scale = self.pooled.max(axis=(2, 3))
        out = np.empty(self.pooled.shape, dtype=np.uint8)
        for layer, head in np.ndindex(scale.shape):
            out[layer, head] = ad.quantise(self.pooled[layer, head], scale[layer, head],
                                           self.log_decades if self.log_scale else None)
        return out

    def _send_thumbs(self) -> None:
        self.thumbs = self.thumbnail_bytes().tobytes()

    def __repr__(self) -> str:
        return f"HeadsMapView({self.n_layers} layers x {self.n_heads} heads, {self.n_tokens} tokens)"


def heads_map(trace, selection: Selection | None = None, thumb_px: int = 48, log_scale: bool = True) -> HeadsMapView:
    """All heads of all layers as thumbnails; clicking one selects it (in a shared `selection`)."""
    return HeadsMapView(trace, selection=selection, thumb_px=thumb_px, log_scale=log_scale)
