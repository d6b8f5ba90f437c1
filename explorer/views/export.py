"""Views as data: `to_json(view)` for a notebook view, `standalone_html(trace, path)` for one offline HTML file.

The HTML page needs no server and no network: heatmap.js (the notebook widget's own drawing code) and export.js
are inlined, each after the views' shared prelude.js, and the data is embedded as JSON with `<`, `>` and `&`
escaped, so no token can end the script.
"""

from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path

import numpy as np

from . import frontend
from .heads_map_view import HeadsMapView
from .heatmap_view import HeatmapView
from .tokens_html import json_for_script, visible


def _rounded(a: np.ndarray, digits: int = 4) -> list:
    """Nested lists of floats rounded to `digits` significant digits."""
    return [[float(f"{v:.{digits}g}") for v in row] for row in np.asarray(a, dtype=float)]


def to_json(view) -> dict:
    """What a view shows, as a JSON-able dict (heatmap: its window of weights; heads map: the statistics table)."""
    if isinstance(view, HeatmapView):
        trace, w = view.trace, view.window_weights()
        rows = range(view.window_start, view.window_start + w.shape[0])
        cols = range(view.key_start, view.key_start + w.shape[1])
        return {
            "view": "heatmap",
            "model": trace.model.name,
            "tokens": list(trace.tokens),
            "n_prompt": trace.n_prompt,
            "layer": view.layer,
            "head": view.head,
            "window": {"query_start": view.window_start, "key_start": view.key_start, "size": view.window_size},
            "query_tokens": [trace.tokens[i] for i in rows],
            "key_tokens": [trace.tokens[j] for j in cols],
            "weights": _rounded(w),
            "selected_token": view.selected_token,
        }
    if isinstance(view, HeadsMapView):
        return {
            "view": "heads_map",
            "model": view.trace.model.name,
            "n_layers": view.n_layers,
            "n_heads": view.n_heads,
            "n_tokens": view.n_tokens,
            "statistics": dict(view.stat_labels),
            "heads": view.head_stats.table(),
            "selected": {"layer": view.layer, "head": view.head},
        }
    raise TypeError(f"to_json knows HeatmapView and HeadsMapView, not {type(view).__name__}")


def packed_attention(trace, n: int) -> np.ndarray:
    """Rows 0..n-1 of every head and of each layer's mean, lower triangles packed: float32 [L, H+1, n(n+1)/2]."""
    out = np.zeros((trace.n_layers, trace.n_heads + 1, n * (n + 1) // 2), dtype=np.float32)
    lower = np.tril_indices(n)
    for layer in range(trace.n_layers):
        heads = [trace.attention_rows(layer, h, 0, n)[:, :n] for h in range(trace.n_heads)]
        for h, a in enumerate([*heads, np.mean(heads, axis=0)]):
            out[layer, h] = a[lower]
    return out


def _payload(trace, layer: int, head: int | None, n: int) -> dict:
    steps = [
        {
            "index": s.index, "position": s.position, "token": visible(s.token), "prob": _finite(s.prob),
            "rank": s.rank, "entropy": _finite(s.entropy), "top_k": [[visible(c.token), _finite(c.prob)] for c in s.top_k],
        }
        for s in trace.steps if s.position < n
    ]
    return {
        "model": trace.model.name or "",
        "tokens": [visible(t) for t in trace.tokens[:n]],  # labels: whitespace made visible
        "text": list(trace.tokens[:n]),  # running text
        "n_tokens": n,
        "total_tokens": trace.n_tokens,
        "n_prompt": min(trace.n_prompt, n),
        "n_layers": trace.n_layers,
        "n_heads": trace.n_heads,
        "layer": layer,
        "head": head,
        "attention": base64.b64encode(packed_attention(trace, n).astype("<f4").tobytes()).decode("ascii"),
        "steps": steps,
    }


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _inline_js(name: str) -> str:
    text = frontend.module(name)  # prelude.js first, as in the notebook: the same colours and helpers
    if "</script" in text.lower() or "<!--" in text:
        raise ValueError(f"{name} contains </script or <!-- and cannot be inlined in a <script> element")
    return text


def standalone_html(trace, path: str | os.PathLike, layer: int = 0, head: int | None = None,
                    max_tokens: int = 64) -> Path:
    """Write one self-contained HTML file: the heatmap with a layer/head picker and a step-through of the
    generated tokens, for the first `max_tokens` tokens (every layer and head, float32: ~L·H·n²·2 bytes)."""
    trace._check(layer, head)
    n = max(1, min(int(max_tokens), trace.n_tokens, 256))
    title = f"Attention of {trace.model.name or 'a model'}"
    shown = f"{n} of {trace.n_tokens} tokens" if n < trace.n_tokens else f"{n} tokens"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body {{ font: 14px sans-serif; margin: 16px; color: #222; }} h1 {{ font-size: 18px; }}
h2 {{ font-size: 15px; margin: 18px 0 6px; }}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{html.escape(shown)}, {trace.n_layers} layers × {trace.n_heads} heads. Hover a cell for its weight;
click a token to select it.</p>
<div id="heatmap"></div>
<h2>Step through the generated tokens</h2>
<div id="stepper"></div>
<script type="application/json" id="attention-data">{json_for_script(_payload(trace, layer, head, n))}</script>
<script type="text/plain" id="heatmap-module">{_inline_js("heatmap.js")}</script>
<script type="module">{_inline_js("export.js")}</script>
</body></html>
"""
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
