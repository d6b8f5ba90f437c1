"""The GPT wrapper: generate or read a text with a Hugging Face causal LM and return a Trace."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, set_seed
from transformers.generation.streamers import BaseStreamer

from ..errors import CaptureError, ExplorerError, ModelLoadError, SettingsError
from ..facts import ModelFacts
from .. import whatif
from ..trace import Trace
from .attention import AttentionRecorder, recording, uses_attention_interface
from .anatomy import Anatomy, find_anatomy
from .lens import HiddenStates, build_lens, check_lens, final_logits, next_token_log_probs
from .positional import probe_positions, read_positional
from .shapes import head_dim, kv_heads
from .probabilities import build_steps
from .settings import GenerationSettings, check_length

PRECISIONS = {"float16": torch.float16, "float32": torch.float32}
# precision="auto" keeps queries and keys in float32 (eager-exact) while they fit this budget, else float16
AUTO_FLOAT32_BUDGET = 100_000_000


class _Progress(BaseStreamer):
    """Counts tokens as `generate` produces them: a tqdm bar and an optional callback(done, total, token text)."""

    def __init__(self, total: int, show: bool, callback: Callable[[int, int, str], None] | None,
                 decode: Callable[[int], str]):
        self.total, self.done, self.callback, self.decode = total, 0, callback, decode
        self.bar = tqdm(total=total, desc="generating", unit="tok", disable=not show)
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:  # generate first sends the prompt
            self._prompt_seen = True
            return
        self.done += 1
        self.bar.update(1)
        if self.callback is not None:
            self.callback(self.done, self.total, self.decode(int(value.reshape(-1)[0])))

    def end(self):
        self.bar.total = self.bar.n  # an end-of-text token may stop it early: that is done, not failed
        self.bar.refresh()
        self.bar.close()


def _context_length(config) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class LanguageModel:
    """A causal language model and its tokenizer, ready to generate with capture on."""

    def __init__(self, model: PreTrainedModel, tokenizer, name: str | None = None):
        if not isinstance(model, PreTrainedModel) or not hasattr(model, "generate"):
            raise ModelLoadError(f"{type(model).__name__} is not a causal language model that can generate text")
        if getattr(model.config, "is_encoder_decoder", False) or not model.can_generate():
            raise ModelLoadError(f"{type(model).__name__} is not a causal language model")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
        self.context_length = _context_length(model.config)
        self._facts: dict | None = None  # what does not change: computed on first use
        self._anatomy: Anatomy | None = None
        self._layer_positions: list[dict] | None = None

    @property
    def layer_positions(self) -> list[dict]:
        """How position reaches each attention layer, measured once by a probe (see capture/layer_positions.py)."""
        if self._layer_positions is None:
            self._layer_positions = probe_positions(self.model)
        return self._layer_positions

    @property
    def anatomy(self) -> Anatomy:
        """Where the decoder blocks and the final norm are (found once, by a probe pass): what the lens reads."""
        if self._anatomy is None:
            self._anatomy = find_anatomy(self.model)
        return self._anatomy

    def _lens_notes(self, lens: str | None) -> list[str]:
        """What the trace will lack because the lens's parts were not found; an explicit lens="all" is refused."""
        if lens is None or self.anatomy.found:
            return []
        if lens == "all":
            raise SettingsError(f"{self.anatomy.problem}, so it has no logit lens: use lens=None")
        return [f"No logit lens and no prompt surprisal: {self.anatomy.problem}."]

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def info(self) -> ModelFacts:
        """Facts about the model at a glance: name, sizes, heads, positional encoding, device, dtype."""
        if self._facts is None:
            config = self.model.config
            self._facts = {
                "name": self.name,
                "architecture": type(self.model).__name__,
                "model_type": config.model_type,
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "layers": config.num_hidden_layers,
                "heads": config.num_attention_heads,
                "kv_heads": kv_heads(config),
                "hidden_size": config.hidden_size,
                "vocab_size": config.vocab_size,
                "context_length": self.context_length,
                "positional": read_positional(self.model, 1, self.layer_positions).kind,
                "capture": "attention interface" if uses_attention_interface(self.model) else "hooks",
            }
        return ModelFacts(**self._facts, device=str(self.device), dtype=str(self.model.dtype).removeprefix("torch."),
                          chat_template=self.has_chat_template)

    def encode(self, text: str, chat: bool = False) -> list[int]:
        """Token ids of `text`, wrapped in the chat template as a user message when chat=True."""
        if not isinstance(text, str):
            raise SettingsError(f"the prompt must be a string, not {type(text).__name__}")
        if not text:
            raise SettingsError("the prompt is empty: type some text")
        if chat:
            if not self.has_chat_template:
                raise SettingsError(f"{self.name} has no chat template: use chat=False")
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(text)["input_ids"]

    def decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 20,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        *,
        chat: bool = False,
        candidates: int = 10,
        lens: str | None = "steps",
        ablate: list[tuple[int, int]] | None = None,
        precision: str = "auto",
        keep_values: bool = False,
        progress: bool = True,
        on_token: Callable[[int, int, str], None] | None = None,
        on_status: Callable[[str], None] | None = None,
        **generate_kwargs,
    ) -> Trace:
        """Generate from `prompt` and capture attention, positions and probabilities of every step.

        temperature=0 decodes greedily; otherwise tokens are sampled (reproducibly when `seed` is set).
        `candidates` is how many top tokens each step (and each cell of the logit lens) keeps. `lens` is which
        positions get a logit lens: "steps" (those that produced each generated token), "all", or None; with a
        lens the prompt's surprisal comes too (lens=None: the generated tokens' only, at plain generate's speed).
        `ablate` lists (layer, head) pairs whose output is zeroed before the output projection in every pass.
        `precision` is how queries and keys are stored:
        "float32" reproduces eager attention to ~1e-6, "float16" halves memory (weights within ~2e-3), and
        "auto" takes float32 while the store fits 100 MB, float16 beyond. `on_token(done, total, text)` is called
        with each new token and `on_status(sentence)` says what is happening. Other keyword arguments
        (min_new_tokens, repetition_penalty, eos_token_id, ...) go to transformers' `generate` unchanged; a
        `do_sample` that contradicts `temperature` raises SettingsError.
        """
        settings, ablate = self._checked(GenerationSettings(max_new_tokens, temperature, top_k, top_p, seed),
                                         generate_kwargs, candidates, lens, ablate)
        ids = self.encode(prompt, chat=chat)
        check_length(len(ids), max_new_tokens, self.context_length, self.name)
        return self._generate_ids(ids, settings, generate_kwargs, chat=chat, candidates=candidates,
                                  lens=lens, precision=precision, keep_values=keep_values, ablate=ablate,
                                  progress=progress, on_token=on_token, on_status=on_status)

    def generate_from_ids(self, token_ids: list[int], max_new_tokens: int = 20, temperature: float = 0.0,
                          top_k: int | None = None, top_p: float | None = None, seed: int | None = None, *,
                          forced=None, chat: bool = False, candidates: int = 10, lens: str | None = "steps",
                          ablate: list[tuple[int, int]] | None = None, precision: str = "auto",
                          keep_values: bool = False, progress: bool = True, on_token=None, on_status=None,
                          **generate_kwargs) -> Trace:
        """`generate` after token ids instead of a text: all of `token_ids` is the prompt. `forced` (a token's
        text, id or Candidate) is put after them as the first new token, with the model's own probability for
        it, before generation goes on; `max_new_tokens` counts it. What a branch is made of."""
        settings, ablate = self._checked(GenerationSettings(max_new_tokens, temperature, top_k, top_p, seed),
                                         generate_kwargs, candidates, lens, ablate)
        token_ids = self._checked_ids(token_ids)
        forced = None if forced is None else self._token_id(forced)
        check_length(len(token_ids), max_new_tokens, self.context_length, self.name)
        return self._generate_ids(token_ids, settings, generate_kwargs, chat=chat, candidates=candidates,
                                  lens=lens, precision=precision, keep_values=keep_values, ablate=ablate,
                                  progress=progress, on_token=on_token, on_status=on_status, forced=forced)

    def _checked_ids(self, token_ids) -> list[int]:
        vocab = self.model.get_output_embeddings().weight.shape[0]
        if not isinstance(token_ids, (list, tuple)) or not token_ids or any(
                isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab for i in token_ids):
            raise SettingsError(f"token_ids must be a non-empty list of token ids 0..{vocab - 1}")
        return list(token_ids)

    def _generate_ids(self, ids: list[int], settings: GenerationSettings, generate_kwargs: dict, *,
                      chat: bool, candidates: int, lens: str | None, precision: str, keep_values: bool,
                      ablate: list[tuple[int, int]], progress: bool, on_token=None, on_status=None,
                      forced: int | None = None) -> Trace:
        """Generate after the prompt `ids` with capture; `forced`, when given, is the first new token."""
        n_prompt, n_new = len(ids), settings.max_new_tokens
        fed = ids + ([forced] if forced is not None else [])  # what the model reads before generating
        remaining = n_new - (len(fed) - n_prompt)
        precision = self._choose_precision(precision, n_prompt + n_new, keep_values)
        recorder = self._recorder(precision, n_prompt + n_new, keep_values, ablate)
        covered = {"all": n_prompt + n_new, "steps": n_new + 1}.get(lens, 0)
        # the prompt's surprisal costs an unembedding row per prompt token (~0.9 s at 1,024 tokens here): it comes
        # with the lens; lens=None is the bare capture, as fast as plain generate
        notes = self._lens_notes(lens)
        hidden = HiddenStates(self.anatomy, lens, n_prompt, prompt_states=lens is not None or forced is not None,
                              capacity=covered)
        raised: list[BaseException] = []  # what the caller's own callbacks raise goes through as it is
        on_token, on_status = _noted(on_token, raised), _noted(on_status, raised)
        streamer = _Progress(remaining, progress, on_token, self.decode_token)
        if on_status is not None:
            on_status(f"reading the prompt ({len(fed)} tokens)")
        started = time.perf_counter()
        with _foreign_errors(self.name, raised), torch.inference_mode(), recording(self.model, recorder), \
                hidden.hooked():
            if settings.seed is not None:
                set_seed(settings.seed)  # python, numpy and torch (all devices), as transformers' own examples do
            if remaining > 0:
                out = self.model.generate(
                    torch.tensor([fed], device=self.device),
                    attention_mask=torch.ones((1, len(fed)), dtype=torch.long, device=self.device),
                    return_dict_in_generate=True,
                    output_logits=True,
                    output_scores=True,
                    streamer=streamer,
                    **({"pad_token_id": _pad_token_id(self)} | settings.generate_kwargs()
                       | {"max_new_tokens": remaining} | generate_kwargs),
                )
                generated_at = time.perf_counter()
                hidden.paused = True  # the last token predicts no step
                self._read_last_token(out)
                hidden.paused = False
                token_ids, logits, scores = out.sequences[0].tolist(), list(out.logits), list(out.scores)
                del out  # its KV cache (48 MB at 1,024 tokens) is not needed by what follows
            else:  # only the forced token: nothing is generated after it
                self.model(torch.tensor([fed], device=self.device), use_cache=False, logits_to_keep=1)
                generated_at = time.perf_counter()
                token_ids, logits, scores = fed, [], []
                streamer.end()
            surprisal = self._surprisal(hidden.prompt, token_ids, len(fed), logits)  # the forced one's from the states
            if forced is not None:  # the forced token's distribution is the model's at the position before it
                if hidden.prompt is None:
                    raise SettingsError(f"cannot branch {self.name}: its decoder blocks or final norm were not found")
                row = final_logits(self.model, hidden.prompt[n_prompt - 1 : n_prompt], self.anatomy)
                only = torch.full_like(row, -torch.inf)
                only[0, forced] = 0.0
                logits, scores = [row, *logits], [only, *scores]
            steps = build_steps(token_ids, n_prompt, logits, scores, self.decode_token, candidates)
            if forced is not None:  # sampled from a distribution that was all on the forced token
                steps[0].sampling_top_k = steps[0].sampling_top_k[:1]
            if on_status is not None and lens:
                on_status("reading the logit lens")
            analysed = self._analyse(hidden, token_ids, candidates, progress)
        if hidden.reread and lens:
            notes.append(f"No logit lens: {self.name} reads the whole text again at every step (it keeps no KV "
                         f"cache), so its positions are not followed.")
        used = settings.as_dict() | {"chat": chat, "candidates": candidates, "lens": lens, "precision": precision,
                                     "ablate": [list(pair) for pair in ablate]}
        used |= {k: v for k, v in generate_kwargs.items() if isinstance(v, (int, float, str, bool, list))}
        timings = {"generate": generated_at - started, "lens": time.perf_counter() - generated_at,
                   "total": time.perf_counter() - started}
        return self._build_trace(token_ids, n_prompt, recorder, steps, used, timings, surprisal, analysed, notes)

    def branch(self, trace: Trace, step: int, token, *, progress: bool = True, on_token=None,
               on_status=None) -> Trace:
        """What if generated token `step` of `trace` had been `token` (a string of one token, a token id, or a
        Candidate)? The prefix before the step is kept, the forced token replaces the step's, and generation
        goes on with the trace's own settings to the same max_new_tokens in total.

        Seed rule: with a seed, the continuation is sampled after set_seed(seed), so a branch equals
        `generate` on its prefix plus the forced token with the same settings and seed.
        """
        prefix, settings = whatif.branch_request(trace, step)
        if trace.model.name and trace.model.name != self.name:
            raise SettingsError(f"this trace was written by {trace.model.name}, not {self.name}: branch it there")
        continuation = self.generate_from_ids(prefix, forced=token, progress=progress, on_token=on_token,
                                              on_status=on_status, **settings)
        return whatif.graft(trace, step, continuation)

    def _token_id(self, token) -> int:
        """A token id from an id, a Candidate, or a string that is exactly one token."""
        from ..trace import Candidate

        if isinstance(token, Candidate):
            token = token.token_id
        if isinstance(token, str):
            ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                pieces = [self.decode_token(i) for i in ids]
                raise SettingsError(f"{token!r} is {len(ids)} tokens {pieces}, not one: pick one of them")
            token = ids[0]
        vocab = self.model.get_output_embeddings().weight.shape[0]
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab:
            raise SettingsError(f"token must be one token's text, a token id 0..{vocab - 1} or a Candidate, "
                                f"not {token!r}")
        return token

    def _checked(self, settings: GenerationSettings, generate_kwargs: dict, candidates, lens, ablate):
        """The settings and heads to switch off of a generation, each checked with its own sentence."""
        settings.check_extra(generate_kwargs)
        _check_passed_through(generate_kwargs)
        _check_candidates(candidates)
        check_lens(lens, generating=True)
        return settings, self._check_ablate(ablate)

    def _check_ablate(self, ablate) -> list[tuple[int, int]]:
        """(layer, head) pairs, checked against the model and sorted; SettingsError names the first bad one."""
        if ablate is None:
            return []
        config = self.model.config
        n_layers, n_heads = config.num_hidden_layers, config.num_attention_heads
        pairs = []
        for pair in ablate:
            if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                    or any(isinstance(x, bool) or not isinstance(x, int) for x in pair)):
                raise SettingsError(f"ablate takes (layer, head) pairs of whole numbers, not {pair!r}")
            layer, head = pair
            if not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise SettingsError(f"ablate: ({layer}, {head}) is not a head of {self.name}: layers 0..{n_layers - 1},"
                                    f" heads 0..{n_heads - 1}")
            pairs.append((layer, head))
        return sorted(set(pairs))

    def trace(self, text: str, *, chat: bool = False, lens: str | None = None, candidates: int = 10,
              ablate: list[tuple[int, int]] | None = None, precision: str = "auto", keep_values: bool = False,
              progress: bool = True) -> Trace:
        """Read `text` in one forward pass and capture its attention, positions and surprisal (no generated
        steps); lens="all" adds a logit lens at every position, `ablate` switches (layer, head) pairs off."""
        return self.trace_ids(self.encode(text, chat=chat), lens=lens, candidates=candidates, ablate=ablate,
                              precision=precision, keep_values=keep_values, progress=progress, chat=chat)

    def trace_ids(self, token_ids: list[int], *, lens: str | None = None, candidates: int = 10,
                  ablate: list[tuple[int, int]] | None = None, precision: str = "auto", keep_values: bool = False,
                  progress: bool = True, chat: bool = False) -> Trace:
        """`trace` of token ids instead of a text: all of them are read as they are, with no special tokens added
        (`chat` is only recorded in the trace's settings)."""
        check_lens(lens, generating=False)
        _check_candidates(candidates)
        ablate = self._check_ablate(ablate)
        ids = self._checked_ids(token_ids)
        check_length(len(ids), 0, self.context_length, self.name)
        precision = self._choose_precision(precision, len(ids), keep_values)
        recorder = self._recorder(precision, len(ids), keep_values, ablate)
        notes = self._lens_notes(lens) or ([] if self.anatomy.found else
                                           [f"No prompt surprisal: {self.anatomy.problem}."])
        hidden = HiddenStates(self.anatomy, lens, len(ids), prompt_states=True, capacity=len(ids) if lens else 0)
        started = time.perf_counter()
        with _foreign_errors(self.name), torch.inference_mode(), recording(self.model, recorder), hidden.hooked():
            # logits at the last position only: all of them would be T × vocabulary floats (400 MB at 2,048)
            self.model(torch.tensor([ids], device=self.device), use_cache=False, logits_to_keep=1)
            forward_at = time.perf_counter()
            surprisal = self._surprisal(hidden.prompt, ids, len(ids), [])
            analysed = self._analyse(hidden, ids, candidates, progress)
        timings = {"forward": forward_at - started, "lens": time.perf_counter() - forward_at}
        settings = {"chat": chat, "candidates": candidates, "lens": lens, "precision": precision,
                    "ablate": [list(pair) for pair in ablate]}
        return self._build_trace(ids, len(ids), recorder, [], settings, timings, surprisal, analysed, notes)

    def _surprisal(self, prompt_states, token_ids: list[int], n_prompt: int, step_logits) -> np.ndarray:
        """-ln p(token_i | tokens before i), float32 [T], NaN at 0: the prompt's from the last block's states,
        the generated tokens' from generate's own raw logits."""
        out = np.full(len(token_ids), np.nan, dtype=np.float32)
        if n_prompt > 1 and prompt_states is not None:  # None: a model whose blocks we could not hook
            targets = torch.tensor(token_ids[1:n_prompt], device=prompt_states.device)
            states = prompt_states[: n_prompt - 1]
            out[1:n_prompt] = -next_token_log_probs(self.model, self.anatomy, states, targets).cpu().numpy()
        if len(step_logits):
            logits = torch.cat(list(step_logits)).float()
            chosen = torch.tensor(token_ids[n_prompt : n_prompt + len(logits)], device=logits.device)
            log_probs = torch.log_softmax(logits, dim=-1).gather(1, chosen[:, None])[:, 0]
            out[n_prompt : n_prompt + len(logits)] = -log_probs.cpu().numpy()
        return out

    def _analyse(self, hidden: HiddenStates, token_ids: list[int], k: int, progress: bool):
        """The logit lens of what `hidden` kept, or None when no lens was asked for."""
        if hidden.reread or not hidden.positions:
            return None
        bar = tqdm(total=1, desc="logit lens", unit="row", disable=not progress)

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            return build_lens(self.model, self.anatomy, hidden.states(), hidden.positions, token_ids, k,
                              self.decode_token, advance)
        finally:
            bar.close()

    def _recorder(self, precision: str, n_positions: int, keep_values: bool, ablate=()) -> AttentionRecorder:
        """A recorder with room for `n_positions` positions of every layer."""
        return AttentionRecorder(PRECISIONS[precision], keep_values, capacity=n_positions,
                                 n_layers=self.model.config.num_hidden_layers, ablate=ablate)

    def _read_last_token(self, out) -> None:
        """The last generated token was never read by the model: one more step gives its attention row."""
        sequence = out.sequences[0]
        if out.past_key_values is None:  # a model that keeps no KV cache (MPT) reads the whole sequence again
            self.model(sequence[None, :], attention_mask=torch.ones_like(sequence[None, :]), use_cache=False)
            return
        self.model(
            sequence[None, -1:],
            attention_mask=torch.ones_like(sequence[None, :]),
            past_key_values=out.past_key_values,
            use_cache=True,
        )

    def _choose_precision(self, precision: str, n_tokens: int, keep_values: bool) -> str:
        if precision == "auto":
            config = self.model.config
            heads_per_layer = config.num_attention_heads + kv_heads(config) * (2 if keep_values else 1)
            per_token = config.num_hidden_layers * heads_per_layer * head_dim(config) * 4  # float32 bytes
            return "float32" if per_token * n_tokens <= AUTO_FLOAT32_BUDGET else "float16"
        if precision not in PRECISIONS:
            raise SettingsError(f"precision must be 'auto' or one of {sorted(PRECISIONS)}, not {precision!r}")
        return precision

    def _build_trace(self, token_ids, n_prompt, recorder, steps, settings, timings, surprisal, lens,
                     notes: list[str]) -> Trace:
        return Trace(
            tokens=[self.decode_token(i) for i in token_ids],
            token_ids=token_ids,
            n_prompt=n_prompt,
            layers=recorder.layers(len(token_ids)),
            steps=steps,
            positional=read_positional(self.model, len(token_ids), self.layer_positions),
            model=self.info(),
            settings=settings,
            timings=timings,
            pieces=self.tokenizer.convert_ids_to_tokens(token_ids),
            surprisal=surprisal,
            lens=lens,
            value_norms=recorder.value_norms(len(token_ids)),
            notes=notes,
        )

    def __repr__(self) -> str:
        return f"LanguageModel({self.name!r}, device={str(self.device)!r}, dtype={self.model.dtype})"


def _noted(callback, raised: list[BaseException]):
    """`callback`, with what it raises also put in `raised`; None stays None."""
    if callback is None:
        return None

    def call(*args):
        try:
            return callback(*args)
        except BaseException as e:
            raised.append(e)
            raise

    return call


@contextmanager
def _foreign_errors(name: str, passed: list[BaseException] = ()):
    """What a model raises inside a capture, as our CaptureError naming the model (the original is chained); what
    the caller's own callbacks raised (`passed`: a service stopping a run whose viewer has gone) goes through."""
    try:
        yield
    except (ExplorerError, KeyboardInterrupt):
        raise
    except Exception as e:
        if any(e is own for own in passed):
            raise
        raise CaptureError(f"{name} failed while its attention was captured ({type(e).__name__}: {e}); plain "
                           f"generate may still work: please report the model family") from e


def _check_passed_through(generate_kwargs: dict) -> None:
    """Refuse keywords of transformers' `generate` that capture sets itself or cannot follow."""
    clash = {"streamer", "return_dict_in_generate", "output_logits", "output_scores"} & set(generate_kwargs)
    if clash:
        raise SettingsError(f"{', '.join(sorted(clash))} is set by attention-explorer itself")
    if generate_kwargs.get("cache_implementation") not in (None, "dynamic"):
        # a static cache hands attention the whole preallocated buffer: new keys are not at its end
        raise SettingsError("capture needs the dynamic KV cache: leave cache_implementation unset")


def _check_candidates(k) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SettingsError(f"candidates must be a whole number ≥ 1, not {k!r}")


def _pad_token_id(lm: LanguageModel) -> int | None:
    tok = lm.tokenizer
    if tok.pad_token_id is not None:
        return tok.pad_token_id
    eos = lm.model.generation_config.eos_token_id
    return eos[0] if isinstance(eos, list) else eos

