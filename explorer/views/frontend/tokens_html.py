"""Tokens as safe, readable text: HTML-escaped, whitespace made visible, coloured by a value.

Tokens come from a tokenizer and may hold anything, `<img src=x onerror=alert(1)>` or `</script>`
included: every function here escapes them, so a token always shows as the characters it is.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence

# whitespace a reader cannot see, shown as a visible mark
VISIBLE = {" ": "␣", "\n": "↵", "\t": "→", "\r": "␍"}
EMPTY = "∅"  # a token that decodes to nothing (a partial UTF-8 byte, say)


def visible(token: str) -> str:
    """The token with whitespace made visible (plain text, not escaped): ' Paris' -> '␣Paris', '\\n' -> '↵'."""
    if token == "":
        return EMPTY
    return "".join(VISIBLE.get(c, c) for c in token)


def escape(token: str) -> str:
    """HTML-escaped token, quotes included, so it is safe inside text and attributes."""
    return html.escape(token, quote=True)


def label(token: str, max_chars: int = 24, plain: bool = False) -> str:
    """A short label for charts: escaped for plotly (which reads HTML entities back into characters), or plain
    text for a front end that sets it with textContent."""
    text = visible(token)
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return text if plain else html.escape(text, quote=False)  # plotly decodes &lt; &gt; &amp;, shows &quot; as is


def unique_labels(tokens: Sequence[str], token_ids: Sequence[int], plain: bool = False) -> list[str]:
    """Chart labels, one per distinct token id: two ids that decode alike get their id appended."""
    labels: list[str] = []
    seen: dict[str, int] = {}
    for token, token_id in zip(tokens, token_ids):
        text = label(token, plain=plain)
        if text in seen and seen[text] != token_id:
            text = f"{text} #{token_id}"
        seen.setdefault(text, token_id)
        labels.append(text)
    return labels


def rgba(rgb: tuple[int, int, int], alpha: float) -> str:
    """A CSS colour with the alpha clipped to 0..1."""
    alpha = min(max(float(alpha), 0.0), 1.0)
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.3f})"


def token_span(token: str, alpha: float = 0.0, title: str = "", rgb: tuple[int, int, int] = (31, 119, 180),
               marked: bool = False) -> str:
    """One token as an escaped <span>: whitespace visible, background by alpha, title on hover."""
    style = f"background:{rgba(rgb, alpha)};"
    if marked:
        style += "outline:2px solid #d62728;"
    return f'<span style="{style}" title="{escape(title)}">{escape(visible(token))}</span>'


def tokens_html(tokens: Sequence[str], values: Sequence[float] | None = None, titles: Sequence[str] | None = None,
                rgb: tuple[int, int, int] = (31, 119, 180), marked: int | None = None) -> str:
    """Tokens as a run of escaped spans, each coloured by value / max(values)."""
    top = max((float(v) for v in values), default=0.0) if values is not None else 0.0
    spans = []
    for i, token in enumerate(tokens):
        alpha = float(values[i]) / top if values is not None and top > 0 else 0.0
        spans.append(token_span(token, alpha, titles[i] if titles else "", rgb, marked == i))
    return '<span style="font-family:monospace;white-space:pre-wrap">' + "".join(spans) + "</span>"


# Surprisal, -ln p(token | tokens before it), on a sequential scale: white at 0 nats, full colour from SURPRISAL_FULL
SURPRISAL_RGB = (230, 85, 13)
SURPRISAL_FULL = 10.0  # nats: p = e^-10 ≈ 4.5e-5


def surprisal_words(nats: float) -> str:
    """A surprisal in nats and bits ('2.30 nats (3.32 bits)'), or 'not known' for NaN."""
    nats = float(nats)
    if math.isnan(nats):
        return "not known"
    return f"{nats:.2f} nats ({nats / math.log(2):.2f} bits)"


def surprisal_legend(rgb: tuple[int, int, int] = SURPRISAL_RGB, full: float = SURPRISAL_FULL) -> str:
    """The surprisal colour scale as a small HTML legend: a white-to-colour bar from 0 to `full` nats."""
    bar = (f"display:inline-block;width:160px;height:12px;vertical-align:middle;border:1px solid #ccc;"
           f"background:linear-gradient(to right,{rgba(rgb, 0)},{rgba(rgb, 1)})")
    none = "display:inline-block;width:12px;height:12px;vertical-align:middle;border:1px solid #ccc;background:#fff"
    return (f'<div class="surprisal-legend" style="font:12px sans-serif;color:#333">surprisal '
            f'0 <span style="{bar}"></span> ≥ {full:g} nats ({full / math.log(2):.1f} bits) &nbsp; '
            f'<span style="{none}"></span> not known (the first token; the prompt of an older trace)</div>')


def most_surprising(tokens: Sequence[str], surprisal, heading: str = "most surprising", n: int = 5) -> str:
    """The `n` tokens of highest known surprisal, most surprising first, as one line of escaped HTML."""
    values = [float(v) for v in surprisal]
    known = sorted((i for i, v in enumerate(values) if not math.isnan(v)), key=lambda i: -values[i])[:n]
    if not known:
        return "<div style='font-family:monospace'>no surprisal known for this text</div>"
    parts = [f"{token_span(tokens[i], 0.25, rgb=SURPRISAL_RGB)} <small>#{i}</small> {escape(surprisal_words(values[i]))}"
             for i in known]
    return f"<div style='font-family:monospace'>{escape(heading)}: " + " · ".join(parts) + "</div>"


def json_for_script(data) -> str:
    """JSON that can sit inside a <script> element: no `<`, `>` or `&` left to end it or open a comment."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
