"""Where attention-explorer keeps what it makes once and reuses: the converted default model, the dashboard's
first trace, the dashboard notebook of a wheel install. Torch-free, so both sides can ask."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$ATTENTION_EXPLORER_CACHE, else $XDG_CACHE_HOME/attention-explorer, else ~/.cache/attention-explorer."""
    if os.environ.get("ATTENTION_EXPLORER_CACHE"):
        return Path(os.environ["ATTENTION_EXPLORER_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "attention-explorer"
