"""Finding the positional encoding a model uses and reading its arrays for positions 0..T-1."""

from __future__ import annotations

import torch

from ..trace import Positional
from .shapes import head_dim

_LEARNED_NAMES = ("wpe", "position_embeddings", "embed_positions")


def _rotary_module(model: torch.nn.Module):
    for module in model.modules():
        if isinstance(getattr(module, "inv_freq", None), torch.Tensor) and "Rotary" in type(module).__name__:
            return module
    return None


def _named_position_module(model: torch.nn.Module):
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in _LEARNED_NAMES:
            return module
    return None


@torch.no_grad()
def read_positional(model: torch.nn.Module, n_tokens: int) -> Positional:
    """The model's positional encoding for positions 0..n_tokens-1, as numpy arrays."""
    rotary = _rotary_module(model)
    if rotary is not None:
        return _rotary(model, rotary, n_tokens)
    module = _named_position_module(model)
    if module is not None:
        offset = int(getattr(module, "offset", 0))
        if "Sinusoidal" in type(module).__name__ and isinstance(getattr(module, "weights", None), torch.Tensor):
            return _sinusoidal(module.weights[offset : offset + n_tokens], offset)
        if isinstance(module, torch.nn.Embedding):
            return _learned(module, n_tokens, offset)
    return Positional(
        kind="none",
        description="No positional encoding was found: order reaches the model only through the causal mask.",
    )


def _rotary(model: torch.nn.Module, rotary: torch.nn.Module, n_tokens: int) -> Positional:
    """The cos and sin tables the rotary module gives for the positions, its frequencies and parameters."""
    config = model.config
    positions = torch.arange(n_tokens, device=model.device)
    probe = torch.zeros(1, dtype=torch.float32, device=model.device)
    cos, sin = rotary(probe, positions[None, :])
    rotary_dim = cos.shape[-1]
    dim = head_dim(config)
    rope = dict(getattr(config, "rope_parameters", None) or {})
    return Positional(
        kind="rotary",
        arrays={
            "cos": cos[0].float().cpu().numpy(),
            "sin": sin[0].float().cpu().numpy(),
            "inv_freq": rotary.inv_freq.float().cpu().numpy(),
        },
        params={
            "head_dim": dim,
            "rotary_dim": rotary_dim,
            "rotary_fraction": rotary_dim / dim,
            "theta": rope.get("rope_theta"),
            "rope_type": rope.get("rope_type", getattr(rotary, "rope_type", "default")),
            "attention_scaling": float(getattr(rotary, "attention_scaling", 1.0)),
        },
        description=(
            f"Rotary (RoPE): each query and key is rotated by an angle position × frequency in "
            f"{rotary_dim // 2} planes ({rotary_dim} of {dim} dimensions per head), so q·k depends "
            f"on the distance between two tokens, not on where they stand."
        ),
    )


def _sinusoidal(table: torch.Tensor, offset: int) -> Positional:
    return Positional(
        kind="sinusoidal",
        arrays={"table": table.float().cpu().numpy()},
        params={"dim": table.shape[-1], "offset": offset},
        description=(
            "Sinusoidal: a fixed table, PE(pos, 2i) = sin(pos / 10000^(2i/d)) and PE(pos, 2i+1) = "
            "cos(pos / 10000^(2i/d)), added to the token embeddings."
        ),
    )


def _learned(module: torch.nn.Embedding, n_tokens: int, offset: int) -> Positional:
    table = module.weight[offset : offset + n_tokens]
    return Positional(
        kind="learned",
        arrays={"embeddings": table.float().cpu().numpy()},
        params={"dim": table.shape[-1], "n_positions": module.num_embeddings - offset, "offset": offset},
        description=(
            "Learned: one trained vector per position (a row of the position-embedding matrix), "
            "added to the token embedding before the first layer."
        ),
    )
