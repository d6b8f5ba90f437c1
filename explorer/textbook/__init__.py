"""The classroom: a textbook GPT written from the formulas, a task whose right attention is known, its training.

    from explorer import textbook
    lm = textbook.load()                                   # the trained copy model shipped in the package
    trace = lm.generate("3 1 4 1 5 |", max_new_tokens=5)   # an explorer.Trace, like the GPT wrapper's
    model, losses = textbook.train()                       # train a fresh one (about 20 s on a CPU)
"""

from __future__ import annotations

import os

from .checkpoint import DEFAULT, read_record
from .lm import TextbookLM
from .model import GPT, GPTConfig, sinusoidal_table
from .task import SEPARATOR, VOCAB, CopyTask, source_positions, weight_on_source
from .train import accuracy, train


def load(path: str | os.PathLike = DEFAULT) -> TextbookLM:
    """The trained copy model shipped with attention-explorer (or another checkpoint), ready to trace."""
    from .checkpoint import load as load_gpt

    return TextbookLM(load_gpt(path), name="textbook-copy")


__all__ = [
    "GPT", "GPTConfig", "TextbookLM", "CopyTask", "VOCAB", "SEPARATOR", "load", "train", "accuracy",
    "read_record", "sinusoidal_table", "source_positions", "weight_on_source",
]
