"""The textbook GPT behind the same face as the Hugging Face wrapper: trace and generate return an explorer.Trace."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from ..capture.probabilities import build_steps
from ..capture.settings import GenerationSettings
from ..errors import SettingsError
from ..facts import ModelFacts
from ..trace import Positional, QueryKeyLayer, Trace
from .model import GPT
from .train import one_thread

SINUSOIDAL = (
    "Sinusoidal: a fixed table, PE(pos, 2i) = sin(pos / 10000^(2i/d)) and PE(pos, 2i+1) = "
    "cos(pos / 10000^(2i/d)), added to the token embeddings."
)


def _filter_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    kth = torch.topk(scores, min(k, scores.shape[-1])).values[..., -1, None]
    return scores.masked_fill(scores < kth, float("-inf"))


def _filter_top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probabilities add up to at least p."""
    sorted_scores, order = torch.sort(scores, descending=True)
    cumulative = sorted_scores.softmax(-1).cumsum(-1)
    drop = cumulative - sorted_scores.softmax(-1) >= p  # the mass before this token already reaches p
    return scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


class TextbookLM:
    """A textbook GPT and its vocabulary, ready to read or write token strings with capture on."""

    def __init__(self, model: GPT, name: str = "textbook-gpt"):
        self.model = model.eval()
        self.name = name
        self.vocab = list(model.config.vocab)

    has_chat_template = False

    def encode(self, tokens: str | list[str]) -> list[int]:
        """Token ids of a list of token strings, or of a string of tokens separated by spaces."""
        if isinstance(tokens, str):
            tokens = tokens.split()
        if not tokens:
            raise SettingsError("the prompt is empty: give at least one token")
        unknown = [t for t in tokens if t not in self.vocab]
        if unknown:
            raise SettingsError(f"{unknown[0]!r} is not in the vocabulary {' '.join(self.vocab)}")
        return [self.vocab.index(t) for t in tokens]

    def info(self) -> ModelFacts:
        """Facts about the model, the record LanguageModel.info() gives."""
        config = self.model.config
        return ModelFacts(
            name=self.name, architecture=type(self.model).__name__, model_type="textbook",
            parameters=self.model.n_parameters, layers=config.n_layer, heads=config.n_head, kv_heads=config.n_head,
            hidden_size=config.n_embd, vocab_size=config.vocab_size, context_length=config.block_size,
            positional="sinusoidal", capture="textbook", device="cpu", dtype="float32", chat_template=False,
        )

    @torch.no_grad()
    def trace(self, tokens: str | list[str]) -> Trace:
        """Read `tokens` in one forward pass and capture every head's q, k, v and weights (no generated steps)."""
        ids = self._check_length(self.encode(tokens), 0)
        started = time.perf_counter()
        with one_thread():
            self.model(torch.tensor([ids]))
        return self._build_trace(ids, len(ids), [], {}, {"forward": time.perf_counter() - started})

    @torch.no_grad()
    def generate(
        self,
        prompt_tokens: str | list[str],
        max_new_tokens: int = 8,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        *,
        candidates: int = 5,
        chat: bool = False,
        on_token: Callable[[int, int, str], None] | None = None,
        on_status: Callable[[str], None] | None = None,
        keep_values: bool = True,
        progress: bool = False,
    ) -> Trace:
        """Write `max_new_tokens` tokens after the prompt (greedy when temperature is 0) and capture every step.

        The keywords after `candidates` are those the dashboard passes to any model it drives: this model has no
        chat template, always keeps values (they are tiny) and is too quick to need a progress bar, but it does
        report each token to `on_token(done, total, token)`."""
        settings = GenerationSettings(max_new_tokens, temperature, top_k, top_p, seed)
        if chat:
            raise SettingsError(f"{self.name} has no chat template: use chat=False")
        ids = self._check_length(self.encode(prompt_tokens), max_new_tokens)
        if on_status is not None:
            on_status(f"reading the prompt ({len(ids)} tokens)")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        raw_logits, sampling_scores = [], []
        started = time.perf_counter()
        idx = torch.tensor([ids])
        with one_thread():
            for _ in range(max_new_tokens):
                logits = self.model(idx)[0][:, -1]
                scores = self._processed(logits, settings)
                if settings.greedy:
                    next_id = logits.argmax(-1, keepdim=True)
                else:
                    next_id = torch.multinomial(scores.softmax(-1), 1, generator=generator)
                raw_logits.append(logits)
                sampling_scores.append(scores)
                idx = torch.cat([idx, next_id], dim=1)
                if on_token is not None:
                    on_token(len(raw_logits), max_new_tokens, self.vocab[int(next_id)])
            generated_at = time.perf_counter()
            self.model(idx)  # the last token's own attention row, as the wrapper records it
        token_ids = idx[0].tolist()
        steps = build_steps(token_ids, len(ids), raw_logits, sampling_scores, self.vocab.__getitem__, candidates)
        timings = {"generate": generated_at - started, "total": time.perf_counter() - started}
        return self._build_trace(token_ids, len(ids), steps, settings.as_dict() | {"candidates": candidates}, timings)

    @staticmethod
    def _processed(logits: torch.Tensor, settings: GenerationSettings) -> torch.Tensor:
        """The scores sampled from: logits / temperature, then top-k, then top-p (as transformers orders them)."""
        if settings.greedy:
            return logits
        scores = logits / settings.temperature
        if settings.top_k is not None:
            scores = _filter_top_k(scores, settings.top_k)
        if settings.top_p is not None and settings.top_p < 1:
            scores = _filter_top_p(scores, settings.top_p)
        return scores

    def _check_length(self, ids: list[int], new: int) -> list[int]:
        context = self.model.config.block_size
        if len(ids) + new > context:
            raise SettingsError(f"{len(ids)} prompt tokens + {new} new ones do not fit: this model reads {context}")
        return ids

    def _build_trace(self, token_ids: list[int], n_prompt: int, steps, settings: dict, timings: dict) -> Trace:
        """The Trace of the last forward pass, which read all of `token_ids`."""
        config = self.model.config
        layers = [
            QueryKeyLayer(
                query=seen.query[0].numpy().copy(),
                key=seen.key[0].numpy().copy(),
                value=seen.value[0].numpy().copy(),
                scaling=1 / math.sqrt(config.head_dim),
            )
            for seen in self.model.internals()
        ]
        n = len(token_ids)
        positional = Positional(
            kind="sinusoidal",
            arrays={"table": self.model.PE[:n].numpy().copy()},
            params={"dim": config.n_embd, "offset": 0, "base": config.base},
            description=SINUSOIDAL,
        )
        tokens = [self.vocab[i] for i in token_ids]
        return Trace(tokens=tokens, token_ids=token_ids, n_prompt=n_prompt, layers=layers, steps=steps,
                     positional=positional, model=self.info(), settings=settings, timings=timings, pieces=list(tokens))

    def __repr__(self) -> str:
        c = self.model.config
        return f"TextbookLM({self.name!r}, {c.n_layer} layers x {c.n_head} heads, d={c.n_embd}, vocab={c.vocab_size})"

