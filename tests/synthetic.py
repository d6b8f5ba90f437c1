"""Traces built from random queries and keys, with no model: any size in a moment, for tests and benchmarks."""

from __future__ import annotations

import numpy as np

from explorer.facts import ModelFacts
from explorer.trace import Candidate, LogitAttribution, LogitLens, Positional, QueryKeyLayer, Step, Trace


def rotary_positional(n_tokens: int, dim: int, theta: float = 10000.0) -> Positional:
    """Rotary positions over the whole head (rotate-half layout): the cos and sin tables [T, dim] a Llama uses."""
    inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2) / dim))
    angles = np.arange(n_tokens)[:, None] * inv_freq[None, :]
    angles = np.concatenate([angles, angles], -1)
    return Positional("rotary", arrays={"cos": np.cos(angles).astype(np.float32), "sin": np.sin(angles).astype(np.float32),
                                        "inv_freq": inv_freq.astype(np.float32)},
                      params={"theta": theta, "rotary_dim": dim})


def synthetic_trace(n_tokens: int, n_layers: int = 2, n_heads: int = 2, kv_heads: int = 1, dim: int = 8, *,
                    sink: float = 4.0, seed: int = 0, rotary: bool = False) -> Trace:
    """A prompt-only trace of random float16 queries and keys. Key 0 is scaled by `sink` so that it draws much
    attention, as a real model's first token does; sink=1 leaves the attention diffuse. rotary=True gives it rotary
    positions (cos and sin tables, as a Llama's), so its queries and keys count as rotated and "no_position" works."""
    rng = np.random.default_rng(seed)
    layers = []
    for _ in range(n_layers):
        query = rng.standard_normal((n_heads, n_tokens, dim)).astype(np.float16)
        key = rng.standard_normal((kv_heads, n_tokens, dim)).astype(np.float16)
        key[:, 0] *= sink
        layers.append(QueryKeyLayer(query=query, key=key, scaling=dim**-0.5))
    return Trace(tokens=[f" t{i}" for i in range(n_tokens)], token_ids=list(range(n_tokens)), n_prompt=n_tokens,
                 layers=layers, steps=[],
                 positional=rotary_positional(n_tokens, dim) if rotary else Positional("none"),
                 model=ModelFacts(name="synthetic", layers=n_layers, heads=n_heads, kv_heads=kv_heads))


def smollm2_shaped_trace(n_tokens: int, *, sink: float = 4.0, seed: int = 0, rotary: bool = False) -> Trace:
    """A synthetic trace of the default model's attention shapes: 30 layers, 9 query heads, 3 key/value heads,
    64 dimensions a head (rotary=True: with SmolLM2's rotary tables, theta 100,000)."""
    trace = synthetic_trace(n_tokens, n_layers=30, n_heads=9, kv_heads=3, dim=64, sink=sink, seed=seed)
    if rotary:
        trace.positional = rotary_positional(n_tokens, 64, theta=100000.0)
    return trace


def with_analysis(trace: Trace, *, n_generated: int = 0, lens: str | None = "steps", k: int = 5, seed: int = 0) -> Trace:
    """`trace` with its last `n_generated` tokens made generated steps, and random but well-formed analysis data:
    surprisal, value norms, and a logit lens over the steps' positions ("steps") or every position ("all")."""
    rng = np.random.default_rng(seed)
    n, vocab = trace.n_tokens, max(trace.token_ids) + 1
    trace.n_prompt = n - n_generated
    words = {i: trace.tokens[trace.token_ids.index(i)] for i in set(trace.token_ids)}

    def top(row_probs):
        order = np.argsort(-row_probs)[:k]
        return [Candidate(words[int(i)], int(i), float(row_probs[i])) for i in order]

    trace.steps = []
    for s in range(n_generated):
        position = trace.n_prompt + s
        probs = rng.dirichlet(np.full(vocab, 0.3))
        token_id = trace.token_ids[position]
        trace.steps.append(Step(index=s, position=position, token=trace.tokens[position], token_id=token_id,
                                prob=float(probs[token_id]), rank=int((probs > probs[token_id]).sum()) + 1,
                                entropy=float(-(probs * np.log(probs + 1e-30)).sum()), top_k=top(probs),
                                sampling_prob=float(probs[token_id]), sampling_entropy=0.0, sampling_top_k=top(probs)))
    trace.surprisal = rng.exponential(2.0, n).astype(np.float32)
    trace.surprisal[0] = np.nan
    trace.value_norms = rng.uniform(0.1, 3.0, (trace.n_layers, trace.n_heads, n)).astype(np.float32)
    if lens is None:
        trace.lens = None
        return trace
    positions = np.array([st.position - 1 for st in trace.steps] if lens == "steps" else range(n), dtype=np.int32)
    probs = rng.dirichlet(np.full(vocab, 0.3), (trace.n_layers, len(positions))).astype(np.float32)
    top_ids = np.argsort(-probs, axis=-1)[..., :k].astype(np.int32)
    nxt = np.array([trace.token_ids[p + 1] if p + 1 < n else 0 for p in positions])
    next_prob = np.take_along_axis(probs, np.broadcast_to(nxt[None, :, None], probs.shape[:2] + (1,)), -1)[..., 0]
    next_rank = (probs > next_prob[..., None]).sum(-1).astype(np.int32) + 1
    end = positions == n - 1
    next_prob[:, end], next_rank[:, end] = np.nan, 0
    trace.lens = LogitLens(positions=positions, top_ids=top_ids, top_probs=np.take_along_axis(probs, top_ids, -1),
                           next_prob=next_prob.astype(np.float32), next_rank=next_rank, words=words)
    return trace


def with_attribution(trace: Trace, *, seed: int = 0) -> Trace:
    """`trace` (with a lens, from `with_analysis`) with a random but well-formed logit attribution at the lens's
    positions that have a next token: each part's share drawn at random, the logit their sum."""
    rng = np.random.default_rng(seed)
    positions = trace.lens.positions[trace.lens.positions + 1 < trace.n_tokens]
    p, layers, heads = len(positions), trace.n_layers, trace.n_heads
    parts = {"heads": rng.normal(0, 0.3, (p, layers, heads)), "attention_bias": rng.normal(0, 0.05, (p, layers)),
             "mlp": rng.normal(0, 0.5, (p, layers)), "embedding": rng.normal(0, 1, p), "constant": rng.normal(0, 0.1, p)}
    parts = {name: array.astype(np.float32) for name, array in parts.items()}
    logit = (parts["heads"].sum((1, 2)) + parts["attention_bias"].sum(1) + parts["mlp"].sum(1) + parts["embedding"]
             + parts["constant"]).astype(np.float32)
    trace.attribution = LogitAttribution(positions=positions.astype(np.int32), logit=logit, **parts)
    return trace
