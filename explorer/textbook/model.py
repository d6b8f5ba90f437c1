"""A textbook GPT, written straight from the formulas: sinusoidal positions, causal multi-head attention, MLP.

    x  = E[tokens] + PE
    Q = XW_Q,  K = XW_K,  V = XW_V               per head, d_k = n_embd / n_head
    A = softmax(QKᵀ/√d_k + mask)                  mask = -inf above the diagonal
    head = AV,  attention(X) = concat(heads) W_O
    block(x) = x + attention(LN(x)),  then  x + MLP(LN(x))
    logits = LN(x) W_vocab

Each attention layer keeps what it computed on its last forward pass (`internals`), per head.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab: list[str] = field(default_factory=list)  # the token strings; id = index
    block_size: int = 32  # longest sequence the model reads
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    base: float = 10000.0  # of the sinusoidal encoding

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoidal_table(n_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / base^(2i/d)),  PE(pos, 2i+1) = cos(pos / base^(2i/d)),  [n_positions, dim]."""
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, dim, 2, dtype=torch.float64)[None, :]
    angle = pos / base ** (two_i / dim)
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return table.float()


@dataclass
class AttentionInternals:
    """What one attention layer computed, per head: q, k, v [B, H, T, d_k]; scores, mask, weights [B, H, T, T]."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    scores: torch.Tensor  # QKᵀ/√d_k, before the mask
    mask: torch.Tensor  # 0 where a query may look, -inf where it may not (the future)
    weights: torch.Tensor  # softmax(scores + mask)
    output: torch.Tensor  # weights @ value, per head, before W_O


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.d_k = config.n_head, config.head_dim
        self.W_Q = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.W_K = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.W_V = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.W_O = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.internals: AttentionInternals | None = None

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_head, self.d_k).transpose(1, 2)  # [B, H, T, d_k]

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        B, T, C = X.shape
        Q, K, V = self.split_heads(self.W_Q(X)), self.split_heads(self.W_K(X)), self.split_heads(self.W_V(X))
        scores = Q @ K.transpose(-2, -1) / math.sqrt(self.d_k)
        mask = torch.full((T, T), float("-inf"), device=X.device).triu(diagonal=1)
        A = torch.softmax(scores + mask, dim=-1)
        heads = A @ V
        self.internals = AttentionInternals(query=Q.detach(), key=K.detach(), value=V.detach(), scores=scores.detach(),
                                            mask=mask, weights=A.detach(), output=heads.detach())
        concat = heads.transpose(1, 2).reshape(B, T, C)
        return self.W_O(concat)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.up = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.down = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        # a formula, not a parameter: rebuilt on load, never saved
        self.register_buffer("PE", sinusoidal_table(config.block_size, config.n_embd, config.base), persistent=False)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits [B, T, vocab]; with targets (-1 = ignore), also the mean cross-entropy."""
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"this model reads at most {self.config.block_size} tokens, not {T}")
        x = self.embed(idx) + self.PE[:T]
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-1)
        return logits, loss

    def internals(self) -> list[AttentionInternals]:
        """Per layer, what attention computed on the last forward pass."""
        return [block.attn.internals for block in self.blocks]

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
