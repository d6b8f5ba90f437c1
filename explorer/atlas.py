"""Head scores over many texts: each text is read once (`lm.trace`), scored (`analysis.head_scores`), and the scores
are summed up per head as a mean, a standard deviation and a count of the texts that have the score.

The built-in texts are TransformerLens's standard material for induction and previous-token heads: sequences of
random tokens, each read twice. Token ids, not strings, since decoding random ids and encoding the text again does
not give the same tokens back. Torch-free: the model is only reached through its `trace` and `trace_ids`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from . import analysis
from .errors import SettingsError

Text = str | list[int]  # a text, or the token ids of one, read as they are
BUILT_IN = {"n": 32, "length": 50, "seed": 0}  # the built-in texts: repeated_random_tokens(lm, **BUILT_IN)


@dataclass
class HeadAtlasOverTexts:
    """Each head score over many texts: name -> float32 [n_layers, n_heads] of the mean over the texts (`mean`), the
    standard deviation of the texts' scores around it (`std`, numpy's, ddof=0) and how many texts have the score
    (`n`: a text with no repeated token has no induction score). Plain numpy: views take it as they take a trace."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    n: dict[str, np.ndarray]
    n_texts: int
    n_layers: int
    n_heads: int
    n_tokens: list[int]  # each text's length in tokens
    model: str  # the model's name
    source: str  # what the texts were, in words ("" for texts given)

    def top(self, name: str, k: int = 5) -> list[tuple[int, int, float, float]]:
        """The k heads with the largest mean `name` score: (layer, head, mean, std), largest first."""
        if name not in self.mean:
            raise SettingsError(f"unknown score {name!r}: the scores are {', '.join(analysis.SCORES)}")
        mean = np.where(np.isnan(self.mean[name]), -np.inf, self.mean[name]).ravel()
        order = np.argsort(-mean, kind="stable")[:k]
        return [(int(i // self.n_heads), int(i % self.n_heads), float(self.mean[name].flat[i]),
                 float(self.std[name].flat[i])) for i in order]

    def __repr__(self) -> str:
        source = f": {self.source}" if self.source else ""
        return (f"HeadAtlasOverTexts({self.model!r}, {self.n_layers} layers x {self.n_heads} heads, "
                f"over {self.n_texts} texts{source})")


def repeated_random_tokens(lm_or_tokenizer, n: int = 32, length: int = 50, seed: int = 0) -> list[list[int]]:
    """n sequences of `length` random token ids, each repeated twice: [prefix, t_1..t_L, t_1..t_L], where the prefix
    is what the tokenizer puts before a text (a BOS token, or nothing). The ids are drawn from the vocabulary
    without special tokens, distinct within a sequence (each token of the second copy has exactly one earlier
    occurrence), and the same for the same seed."""
    for name, value in (("n", n), ("length", length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SettingsError(f"{name} must be a whole number ≥ 1, not {value!r}")
    tokenizer = getattr(lm_or_tokenizer, "tokenizer", lm_or_tokenizer)
    allowed = np.setdiff1d(np.arange(_vocab_size(lm_or_tokenizer)), sorted(_special_ids(tokenizer)))
    if length > len(allowed):
        raise SettingsError(f"length {length} is more than the {len(allowed)} ordinary tokens of the vocabulary")
    prefix = _text_prefix(tokenizer)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tokens = rng.choice(allowed, size=length, replace=False).tolist()
        out.append(prefix + tokens + tokens)
    return out


def head_atlas(lm, texts: Sequence[Text] | None = None, batch_size: int = 16, *,
               progress: bool = True) -> HeadAtlasOverTexts:
    """Every head score of `lm` over many texts (strings, or lists of token ids read as they are): their mean,
    standard deviation and count, [n_layers, n_heads] each. texts=None reads the built-in set,
    `repeated_random_tokens(lm)`: 32 sequences of 50 random tokens, each read twice. Texts are read `batch_size`
    at a time, with a progress bar over the texts."""
    if texts is None:
        texts = repeated_random_tokens(lm, **BUILT_IN)
        source = "{n} sequences of {length} random tokens, each read twice (seed {seed})".format(**BUILT_IN)
    else:
        texts, source = _checked_texts(texts), ""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SettingsError(f"batch_size must be a whole number ≥ 1, not {batch_size!r}")
    per_text: dict[str, list[np.ndarray]] = {name: [] for name in analysis.SCORES}
    n_tokens: list[int] = []
    shape = None
    with tqdm(total=len(texts), desc="head atlas", unit="text", disable=not progress) as bar:
        for first in range(0, len(texts), batch_size):
            for trace in read_batch(lm, texts[first : first + batch_size]):
                scores = analysis.head_scores(trace)
                for name in analysis.SCORES:
                    per_text[name].append(scores[name])
                n_tokens.append(trace.n_tokens)
                shape = (trace.n_layers, trace.n_heads)
                bar.update(1)
    stacked = {name: np.stack(values).astype(np.float64) for name, values in per_text.items()}
    with warnings.catch_warnings():  # a score no text has (no repeated token anywhere) is NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = {name: np.nanmean(a, 0).astype(np.float32) for name, a in stacked.items()}
        std = {name: np.nanstd(a, 0).astype(np.float32) for name, a in stacked.items()}
    count = {name: (~np.isnan(a)).sum(0) for name, a in stacked.items()}
    return HeadAtlasOverTexts(mean=mean, std=std, n=count, n_texts=len(texts), n_layers=shape[0], n_heads=shape[1],
                              n_tokens=n_tokens, model=getattr(lm, "name", type(lm).__name__), source=source)


def read_batch(lm, texts: Sequence[Text]) -> list:
    """The traces of a batch of texts, in order, read as one left-padded forward pass without a lens (strings are
    encoded as `lm.trace` encodes them; each trace equals its text's own)."""
    rows = [lm.encode(text) if isinstance(text, str) else list(text) for text in texts]
    return lm.trace_ids(rows, lens=None, progress=False, batch_size=max(1, len(rows)))


def _checked_texts(texts) -> list[Text]:
    """`texts` as a list of strings and token-id lists (Python ints); SettingsError names the first bad item."""
    if isinstance(texts, str):
        raise SettingsError("texts must be a list of texts, not one string: pass [text]")
    if not isinstance(texts, Sequence) or isinstance(texts, bytes):
        raise SettingsError(f"texts must be a list of strings or of token-id lists, not {type(texts).__name__}")
    if not texts:
        raise SettingsError("texts is empty: give at least one text (or texts=None for the built-in set)")
    out = []
    for i, text in enumerate(texts):
        if isinstance(text, str):
            if not text:
                raise SettingsError(f"texts[{i}] is an empty string")
            out.append(text)
        elif isinstance(text, (list, tuple, np.ndarray)) and len(text) and all(
                isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in text):
            out.append([int(t) for t in text])
        else:
            raise SettingsError(f"texts[{i}] is {_describe(text)}: each text must be a string or a non-empty "
                                f"list of token ids")
    return out


def _describe(value) -> str:
    if isinstance(value, (list, tuple)) and not value:
        return "an empty list"
    if isinstance(value, (list, tuple)):
        return "a list that holds something other than whole numbers"
    return f"a {type(value).__name__} ({value!r:.40})"


def _vocab_size(lm_or_tokenizer) -> int:
    """The token ids both the model and its tokenizer know: a model's rows past the tokenizer's are untrained."""
    sizes = []
    model = getattr(lm_or_tokenizer, "model", None)
    if model is not None:
        sizes.append(int(model.config.vocab_size))
    tokenizer = getattr(lm_or_tokenizer, "tokenizer", lm_or_tokenizer)
    if hasattr(tokenizer, "__len__"):
        sizes.append(len(tokenizer))
    elif isinstance(getattr(tokenizer, "vocab_size", None), int):
        sizes.append(tokenizer.vocab_size)
    if not sizes:
        raise SettingsError(f"cannot tell the vocabulary of a {type(lm_or_tokenizer).__name__}: pass the model")
    return min(sizes)


def _special_ids(tokenizer) -> set[int]:
    """Every special token id a tokenizer names: BOS, EOS, padding, unknown, and added special tokens (chat
    markers), with whatever it puts around a text."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            ids.add(value)
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids |= {int(i) for i, token in added.items() if getattr(token, "special", False)}
    ids |= set(tokenizer("a")["input_ids"]) - set(tokenizer("a", add_special_tokens=False)["input_ids"])
    return ids


def _text_prefix(tokenizer) -> list[int]:
    """What the tokenizer puts before a text (say, a BOS token), so that token ids are read as a text would be."""
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a")["input_ids"])
    starts = [k for k in range(len(full) - len(plain) + 1) if full[k : k + len(plain)] == plain]
    return full[: starts[0]] if plain and starts else []
