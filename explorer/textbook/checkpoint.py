"""The shipped checkpoint: weights in safetensors, config and training record in JSON beside them (no pickle).

It is package data (explorer/textbook/trained/), so a wheel install has it too."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from .model import GPT, GPTConfig

TRAINED = Path(__file__).resolve().parent / "trained"
DEFAULT = TRAINED / "textbook-copy.safetensors"


def save(model: GPT, path: str | os.PathLike = DEFAULT, losses: list[float] | None = None, **record) -> Path:
    """Write the weights to `path` and {config, losses, ...record} to the .json beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    meta = {"config": model.config.to_dict(), "losses": [round(x, 5) for x in losses or []], **record}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return path


def read_record(path: str | os.PathLike = DEFAULT) -> dict:
    """The JSON beside a checkpoint: config, training losses and how the training went."""
    return json.loads(Path(path).with_suffix(".json").read_text())


def load(path: str | os.PathLike = DEFAULT) -> GPT:
    """The GPT stored at `path` (the trained copy model by default), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python -m explorer.textbook` to make it")
    model = GPT(GPTConfig(**read_record(path)["config"]))
    model.load_state_dict(load_file(str(path)))
    return model.eval()
