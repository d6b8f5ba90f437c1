"""Views as data: `to_json(view)` for a notebook view, `standalone_html(trace, path)` for one offline HTML file.

The HTML page needs no server and no network: heatmap.js (the notebook widget's own drawing code) and export.js
are inlined, each after the views' shared prelude.js, and the data is embedded as JSON with `<`, `>` and `&`
escaped, so no token can end the script. Below the heatmap and the stepper the page shows the analysis the trace
holds (`analysis_payload`): the text coloured by surprisal, the logit lens and the head atlas.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
import os
from pathlib import Path

import numpy as np

from . import frontend
from .attention.heads_map_view import HeadsMapView
from .attention.heatmap_view import HeatmapView
from ..trace import QueryKeyLayer, Trace, WeightsLayer
from .frontend.tokens_html import SURPRISAL_FULL, SURPRISAL_RGB, json_for_script, visible


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


# --- the analysis the page shows under the heatmap and the stepper: surprisal, logit lens, head atlas


def _significant(a, digits: int = 4):
    """`a` as nested lists rounded to `digits` significant digits; NaN and ±inf become None (JSON has neither)."""
    a = np.asarray(a, dtype=float)
    if a.ndim == 0:
        return float(f"{a:.{digits}g}") if math.isfinite(a) else None
    return [_significant(x, digits) for x in a]


def first_tokens(trace: Trace, n: int) -> Trace:
    """The trace cut to its first `n` tokens: attention is causal, so their rows are those of the whole trace."""
    if n >= trace.n_tokens:
        return trace
    layers = []
    for layer in trace.layers:
        if isinstance(layer, QueryKeyLayer):
            value = None if layer.value is None else layer.value[:, :n]
            layers.append(dataclasses.replace(layer, query=layer.query[:, :n], key=layer.key[:, :n], value=value))
        elif isinstance(layer, WeightsLayer):
            layers.append(WeightsLayer(layer.packed[:, : n * (n + 1) // 2]))
        else:
            raise TypeError(f"first_tokens does not know {type(layer).__name__}")
    norms = None if trace.value_norms is None else trace.value_norms[:, :, :n]
    return dataclasses.replace(
        trace, tokens=trace.tokens[:n], token_ids=trace.token_ids[:n], n_prompt=min(trace.n_prompt, n), layers=layers,
        steps=[s for s in trace.steps if s.position < n], surprisal=trace.surprisal[:n], lens=None, value_norms=norms,
        pieces=None if trace.pieces is None else trace.pieces[:n])


def _surprisal_payload(trace: Trace, n: int) -> dict | None:
    """The surprisal of the first n tokens (None where not known) and its colour scale; None when none is known."""
    values = np.asarray(trace.surprisal[:n], dtype=np.float32)
    if np.isnan(values).all():
        return None
    return {"values": _significant(values), "rgb": list(SURPRISAL_RGB), "full": SURPRISAL_FULL}


def _lens_payload(trace: Trace, n: int) -> dict | None:
    """The logit lens at the covered positions among the first n tokens; None without a lens or such positions."""
    lens = trace.lens
    if lens is None:
        return None
    columns = np.flatnonzero(lens.positions < n)
    if not len(columns):
        return None
    positions = lens.positions[columns]
    top_ids = lens.top_ids[:, columns]
    return {
        "positions": positions.tolist(),
        "next_tokens": [trace.tokens[p + 1] if p + 1 < trace.n_tokens else None for p in positions],
        "top_ids": top_ids.tolist(),  # [L, P, k], most likely first
        "top_probs": _significant(lens.top_probs[:, columns]),
        "next_prob": _significant(lens.next_prob[:, columns]),  # None at the trace's end
        "next_rank": lens.next_rank[:, columns].tolist(),
        "words": {str(i): lens.words.get(i, "") for i in sorted(set(top_ids.ravel().tolist()))},
    }


def _atlas_payload(trace: Trace, n: int) -> dict | None:
    """Every head's scores (trace.head_scores) over the first n tokens: the attention the page holds, at a cost
    that grows with n² (n ≤ 256 here; the whole of a 2,048-token trace takes ~7 s)."""
    if trace.n_layers == 0 or n < 2:
        return None
    scores = first_tokens(trace, n).head_scores()
    return {"n_tokens": n, "names": list(scores), "scores": {name: _significant(a) for name, a in scores.items()}}


def analysis_payload(trace: Trace, n: int) -> dict:
    """What the page's analysis sections show for the first n tokens; a section is None when the trace lacks it."""
    return {"surprisal": _surprisal_payload(trace, n), "lens": _lens_payload(trace, n),
            "atlas": _atlas_payload(trace, n)}


def _inline_js(name: str) -> str:
    text = frontend.module(name)  # prelude.js first, as in the notebook: the same colours and helpers
    if "</script" in text.lower() or "<!--" in text:
        raise ValueError(f"{name} contains </script or <!-- and cannot be inlined in a <script> element")
    return text


def _kinds_payload(trace: Trace, n: int) -> dict:
    """What the heatmap's kind picker needs beyond the attention: the value norms of the first n keys (float32
    [L, H, n]) for value-weighted attention, and the rollout of the first n tokens (float32 [n, n]; rollout is
    causal, so it is the whole trace's restricted to them)."""
    b64 = lambda a: base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")  # noqa: E731
    prefix = first_tokens(trace, n)
    return {
        "kinds": [*(k for k in trace.kinds if k != "no_position"), "rollout"],  # the page cannot take position out
        "norms": b64(trace.value_norms[:, :, :n]) if trace.value_norms is not None else None,
        "rollout": b64(prefix.attention_flow("rollout")),
    }


def _page_data(trace, layer: int, head: int | None, n: int) -> dict:
    """Everything the page's script reads: the attention and steps (_payload), the heatmap's kinds, the analysis."""
    return {**_payload(trace, layer, head, n), **_kinds_payload(trace, n), "analysis": analysis_payload(trace, n)}


def standalone_html(trace, path: str | os.PathLike, layer: int = 0, head: int | None = None,
                    max_tokens: int = 64) -> Path:
    """Write one self-contained HTML file: the heatmap with layer, head and kind pickers (attention, value-weighted,
    rollout), a step-through of the generated tokens and the analysis the trace holds (surprisal, logit lens, head
    atlas), for the first `max_tokens` tokens (every layer and head, float32: ~L·H·n²·2 bytes)."""
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
<div id="analysis"></div>
<script type="application/json" id="attention-data">{json_for_script(_page_data(trace, layer, head, n))}</script>
<script type="text/plain" id="heatmap-module">{_inline_js("attention/heatmap.js")}</script>
<script type="module">{_inline_js("export.js")}</script>
</body></html>
"""
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
