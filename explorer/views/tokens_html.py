"""Tokens as safe, readable text: HTML-escaped, whitespace made visible, coloured by a value.

Tokens come from a tokenizer and may hold anything, `<img src=x onerror=alert(1)>` or `</script>`
included: every function here escapes them, so a token always shows as the characters it is.
"""

from __future__ import annotations

import html
import json
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


def json_for_script(data) -> str:
    """JSON that can sit inside a <script> element: no `<`, `>` or `&` left to end it or open a comment."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
