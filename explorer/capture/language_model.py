"""The GPT wrapper: generate or read a text with a Hugging Face causal LM and return a Trace."""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel, set_seed
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
from transformers.generation.streamers import BaseStreamer

from ..errors import CaptureError, ExplorerError, ModelLoadError, SettingsError
from ..facts import ModelFacts
from .. import whatif
from ..trace import LogitLens, Trace
from .attention import AttentionRecorder, recording, uses_attention_interface
from .anatomy import Anatomy, find_anatomy
from .attribution import Writers, attribute
from .lens import HiddenStates, build_lenses, check_lens, final_logits, next_token_log_probs
from .lens_ahead import LensAhead
from .positional import probe_positions, read_positional
from .shapes import head_dim, kv_heads
from .probabilities import StepRecorder, StepStats, build_steps, steps_of
from .settings import GenerationSettings, check_length

PRECISIONS = {"float16": torch.float16, "float32": torch.float32}
_WIDTH = {"float16": 2, "float32": 4}
# precision="auto" keeps queries and keys in float32 (eager-exact) while they fit this budget, else float16
AUTO_FLOAT32_BUDGET = 100_000_000


class _Progress(BaseStreamer):
    """Counts tokens as `generate` produces them: a tqdm bar and an optional callback. For one prompt the callback
    is called (done, total, token text); for a batch (`names`: each row's index in the caller's list) it is called
    (name, done, total, token text) for each row still going. `generate` hands over tokens it already copied to
    the host: nothing here waits for the device."""

    def __init__(self, total: int, show: bool, callback: Callable | None, decode: Callable[[int], str],
                 names: list[int] | None = None, eos: set[int] = frozenset()):
        self.total, self.done, self.callback, self.decode = total, 0, callback, decode
        self.names, self.eos, self.finished = names, eos, set()
        self.bar = tqdm(total=total, desc="generating", unit="tok", disable=not show)
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:  # generate first sends the prompt
            self._prompt_seen = True
            return
        self.done += 1
        self.bar.update(1)
        if self.callback is None:
            return
        if self.names is None:
            self.callback(self.done, self.total, self.decode(int(value.reshape(-1)[0])))
            return
        for row, token in enumerate(value.reshape(-1)):
            if row in self.finished:
                continue
            token = int(token)
            if token in self.eos:
                self.finished.add(row)
            self.callback(self.names[row], self.done, self.total, self.decode(token))

    def end(self):
        self.bar.total = self.bar.n  # an end-of-text token may stop it early: that is done, not failed
        self.bar.refresh()
        self.bar.close()


class _Batch:
    """Prompts (token ids) as one left-padded batch: ids and mask [rows, width] on `device`, and each row's
    padding. Left padding puts every row's last prompt token at the same position, where generation starts."""

    def __init__(self, rows: list[list[int]], pad_id: int | None, device):
        self.width = max(map(len, rows))
        self.pads = [self.width - len(ids) for ids in rows]
        self.pad_id = pad_id if pad_id is not None or not any(self.pads) else 0
        fill = 0 if self.pad_id is None else self.pad_id
        self.ids = torch.tensor([[fill] * pad + ids for pad, ids in zip(self.pads, rows)], device=device)
        self.mask = torch.tensor([[0] * pad + [1] * len(ids) for pad, ids in zip(self.pads, rows)], device=device)


class _RowSampler(LogitsProcessor):
    """Samples every batch row from its own generator seeded with the seed, so that a prompt's draws are those
    of its single call whatever batch it is in (one generator for the batch would hand each row other numbers).
    It comes last, after the sampling warpers and the step recorder (which sees the distribution sampled from),
    and returns scores where only the drawn token is possible, which `generate`'s greedy step then takes."""

    def __init__(self, seed: int, rows: int, device):
        self.generators = [torch.Generator(device=device).manual_seed(seed) for _ in range(rows)]

    @classmethod
    def replacing(cls, settings: GenerationSettings, kwargs: dict, rows: int, device,
                  recorder: StepRecorder) -> _RowSampler | None:
        """For seeded sampling: a sampler, with `kwargs` (for `generate`) changed to decode through it, the
        recorder just before it; else None and `kwargs` as they were."""
        if settings.greedy or settings.seed is None:
            return None
        sampler = cls(settings.seed, rows, device)
        warpers = []  # transformers' own order: temperature, top-k, top-p
        if settings.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(float(settings.temperature)))
        if settings.top_k:
            warpers.append(TopKLogitsWarper(int(settings.top_k)))
        if settings.top_p is not None and settings.top_p < 1.0:
            warpers.append(TopPLogitsWarper(float(settings.top_p)))
        kwargs["logits_processor"] = LogitsProcessorList([*(kwargs.get("logits_processor") or []), *warpers, recorder,
                                                          sampler])
        kwargs |= {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
        return sampler

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float(), dim=-1)
        drawn = torch.cat([torch.multinomial(probs[row : row + 1], 1, generator=generator)
                           for row, generator in enumerate(self.generators)])
        return torch.full_like(scores, -torch.inf).scatter_(1, drawn, 0.0)


# sampling settings of transformers that the row sampler does not apply: with them, transformers samples
_OTHER_WARPERS = ("min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h")


def _foreign_warpers(model, settings: GenerationSettings, generate_kwargs: dict) -> bool:
    """Whether a seeded sampling uses warpers the row sampler does not apply (set here or in the model's own
    generation config)."""
    if settings.greedy or settings.seed is None:
        return False
    config = model.generation_config
    defaults = {"typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}
    return any(generate_kwargs.get(name, getattr(config, name, None)) not in (None, defaults.get(name))
               for name in _OTHER_WARPERS)


def _until_end(generated: list[int], eos: set[int]) -> int:
    """How many of a batch row's generated tokens are its own: up to and with its first end-of-text token (after
    it, `generate` pads the row while the others go on)."""
    for i, token in enumerate(generated):
        if token in eos:
            return i + 1
    return len(generated)


def _context_length(config) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _taking_turns(method):
    """`method` with the model to itself: a run's hooks catch every forward pass of the model, another thread's too,
    so the runs (and probes) of one model from several threads take turns. A run started by a run's own callback (in
    its thread, so it cannot wait for it) is refused: its passes would be recorded into the outer run."""

    @functools.wraps(method)
    def in_turn(self, *args, **kwargs):
        with self._turn:
            if self._in_run:
                raise SettingsError(f"{self.name} is in a run already: a run's callbacks (on_token, on_capture, "
                                    f"on_trace, on_status) cannot start another run of the same model")
            self._in_run = True
            try:
                return method(self, *args, **kwargs)
            finally:
                self._in_run = False

    return in_turn


class LanguageModel:
    """A causal language model and its tokenizer, ready to generate with capture on. One model may be used from
    several threads: their runs take turns."""

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
        self._turn = threading.RLock()  # held by the run (or probe) that has the model's hooks
        self._in_run = False  # set while a run holds the turn (a probe inside a run takes it again)

    @property
    def layer_positions(self) -> list[dict]:
        """How position reaches each attention layer, measured once by a probe (see capture/layer_positions.py)."""
        with self._turn:
            if self._layer_positions is None:
                self._layer_positions = probe_positions(self.model)
        return self._layer_positions

    @property
    def anatomy(self) -> Anatomy:
        """Where the decoder blocks and the final norm are (found once, by a probe pass): what the lens reads."""
        with self._turn:
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
        prompt: str | list[str],
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
        batch_size: int = 8,
        progress: bool = True,
        on_token: Callable | None = None,
        on_status: Callable[[str], None] | None = None,
        on_capture: Callable | None = None,
        on_trace: Callable[[int, Trace], None] | None = None,
        **generate_kwargs,
    ) -> Trace | list[Trace]:
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

        A list of prompts gives a list of traces, in the same order. They are generated `batch_size` at a time
        (prompts of similar length together), left-padded, each row with its own positions and mask, and each
        trace equals the one its prompt alone gives: the same tokens, attention, steps, lens and surprisal. A row
        that reaches its end-of-text token stops there. `on_token(prompt_index, done, total, text)` then names the
        prompt. The same seed means the same trace: with a seed, every prompt is sampled from its own random
        generator seeded with `seed`, so a prompt's trace does not depend on the batch it was read in (each
        prompt of a list gets the same seed; give prompts their own seeds by calling for each one).
        `on_capture(trace)` (for a list, `on_capture(prompt_index, trace)`) gets each trace as soon as its capture
        is done, before its logit lens is read (`trace.lens_pending` is then True): the stepper and the heatmap
        can be drawn at once. The same object gets its lens before the call returns it. `on_trace(prompt_index,
        trace)` gets each prompt's trace once it is complete, before the call returns them all: a service can
        answer each prompt without waiting for the rest of the call.
        """
        settings, ablate = self._checked(GenerationSettings(max_new_tokens, temperature, top_k, top_p, seed),
                                         generate_kwargs, candidates, lens, ablate)
        prompts = self._prompts(prompt, chat, max_new_tokens)
        traces = self._in_batches(prompts, batch_size, settings, generate_kwargs, on_token, on_status, chat=chat,
                                  candidates=candidates, lens=lens, precision=precision, keep_values=keep_values,
                                  ablate=ablate, progress=progress, on_capture=on_capture, on_trace=on_trace)
        return traces if isinstance(prompt, (list, tuple)) else traces[0]

    def _prompts(self, prompt, chat: bool, max_new_tokens: int) -> list[list[int]]:
        """The token ids of a prompt or of each prompt of a list, each checked to fit the context."""
        if not isinstance(prompt, (list, tuple)):
            ids = self.encode(prompt, chat=chat)
            check_length(len(ids), max_new_tokens, self.context_length, self.name)
            return [ids]
        if not prompt:
            raise SettingsError("the list of prompts is empty: give at least one")
        out = []
        for i, text in enumerate(prompt):
            try:
                ids = self.encode(text, chat=chat)
                check_length(len(ids), max_new_tokens, self.context_length, self.name)
            except SettingsError as e:
                raise SettingsError(f"prompt {i}: {e}") from None
            out.append(ids)
        return out

    def _in_batches(self, prompts: list[list[int]], batch_size, settings: GenerationSettings, generate_kwargs: dict,
                    on_token, on_status, on_capture=None, on_trace=None, **options) -> list[Trace]:
        """Generate after each prompt, `batch_size` rows at a time, prompts of similar length together; the traces
        come back in the prompts' order."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SettingsError(f"batch_size must be a whole number ≥ 1, not {batch_size!r}")
        if _foreign_warpers(self.model, settings, generate_kwargs):  # sampled by transformers: one at a time keeps
            batch_size = 1  # each prompt's draws its own
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        traces: list[Trace | None] = [None] * len(prompts)
        for first in range(0, len(order), batch_size):
            rows = order[first : first + batch_size]
            if on_status is not None and len(prompts) > 1:
                on_status(f"generating prompts {first + 1}–{first + len(rows)} of {len(prompts)}")
            made = self._generate_rows([prompts[i] for i in rows], settings, generate_kwargs, on_token=on_token,
                                       on_status=on_status, names=rows if len(prompts) > 1 else None,
                                       on_capture=on_capture, on_trace=on_trace, **options)
            for i, trace in zip(rows, made):
                traces[i] = trace
        return traces

    def generate_from_ids(self, token_ids: list[int], max_new_tokens: int = 20, temperature: float = 0.0,
                          top_k: int | None = None, top_p: float | None = None, seed: int | None = None, *,
                          forced=None, chat: bool = False, candidates: int = 10, lens: str | None = "steps",
                          ablate: list[tuple[int, int]] | None = None, precision: str = "auto",
                          keep_values: bool = False, progress: bool = True, on_token=None, on_status=None,
                          on_capture=None, **generate_kwargs) -> Trace:
        """`generate` after token ids instead of a text: all of `token_ids` is the prompt. `forced` (a token's
        text, id or Candidate) is put after them as the first new token, with the model's own probability for
        it, before generation goes on; `max_new_tokens` counts it. What a branch is made of."""
        settings, ablate = self._checked(GenerationSettings(max_new_tokens, temperature, top_k, top_p, seed),
                                         generate_kwargs, candidates, lens, ablate)
        token_ids = self._checked_ids(token_ids)
        forced = None if forced is None else self._token_id(forced)
        check_length(len(token_ids), max_new_tokens, self.context_length, self.name)
        return self._generate_rows([token_ids], settings, generate_kwargs, chat=chat, candidates=candidates,
                                   lens=lens, precision=precision, keep_values=keep_values, ablate=ablate,
                                   progress=progress, on_token=on_token, on_status=on_status, forced=forced,
                                   on_capture=on_capture)[0]

    def _checked_ids(self, token_ids) -> list[int]:
        vocab = self.model.get_output_embeddings().weight.shape[0]
        if not isinstance(token_ids, (list, tuple)) or not token_ids or any(
                isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab for i in token_ids):
            raise SettingsError(f"token_ids must be a non-empty list of token ids 0..{vocab - 1}")
        return list(token_ids)

    @_taking_turns
    def _generate_rows(self, prompts: list[list[int]], settings: GenerationSettings, generate_kwargs: dict, *,
                       chat: bool, candidates: int, lens: str | None, precision: str, keep_values: bool,
                       ablate: list[tuple[int, int]], progress: bool, on_token=None, on_status=None,
                       forced: int | None = None, names: list[int] | None = None, on_capture=None,
                       on_trace=None) -> list[Trace]:
        """Generate after each of `prompts` (token ids) in one left-padded batch, with capture; `forced`, when
        given (one prompt only), is the first new token. `names`: each row's index for on_token and on_trace, in a
        list. Each row's trace is made after the run and handed to `on_capture`; then the lenses of all rows, each
        handed with its trace to `on_trace`."""
        n_new = settings.max_new_tokens
        fed = [ids + ([forced] if forced is not None else []) for ids in prompts]  # what the model reads first
        batch = _Batch(fed, _pad_token_id(self), self.device)
        remaining = n_new - (1 if forced is not None else 0)
        precisions = [self._choose_precision(precision, len(ids) + n_new, keep_values) for ids in prompts]
        # one device buffer for the batch, in the widest precision a row needs; each trace gets its own
        recorder = self._recorder(max(precisions, key=_WIDTH.get), batch.width + n_new, keep_values, ablate)
        recorder.defer_norms = True  # the KV cache keeps every value: their norms are computed after the run
        covered = {"all": batch.width + n_new, "steps": n_new + 1}.get(lens, 0)
        # the prompt's surprisal costs an unembedding row per prompt token (~0.9 s at 1,024 tokens here): it comes
        # with the lens; lens=None is the bare capture, as fast as plain generate
        notes = self._lens_notes(lens)
        # a forced token's own step is produced at the position before it: the lens and attribution cover it too
        hidden = HiddenStates(self.anatomy, lens, batch.width - (forced is not None),
                              prompt_states=lens is not None or forced is not None, capacity=covered + 1)
        writers = Writers(self.model, hidden)
        raised: list[BaseException] = []  # what the caller's own callbacks raise goes through as it is
        on_token, on_status = _noted(on_token, raised), _noted(on_status, raised)
        on_capture, on_trace = _noted(on_capture, raised), _noted(on_trace, raised)
        eos = self._eos_ids(generate_kwargs)
        streamer = _Progress(remaining, progress, on_token, self.decode_token, names, eos)
        if on_status is not None:
            on_status(f"reading the prompt ({len(fed[0])} tokens)" if len(fed) == 1 else
                      f"reading {len(fed)} prompts ({min(map(len, fed))}–{batch.width} tokens)")
        started = time.perf_counter()
        ahead = LensAhead.for_run(self.model, self.anatomy, hidden, candidates,
                                  list(zip(batch.pads, fed)), self.device) if remaining > 0 else None
        try:  # the lens's reader is done with this run whatever happens in it
            with _foreign_errors(self.name, raised), torch.inference_mode(), recording(self.model, recorder), \
                    hidden.hooked(), writers.hooked():
                if settings.seed is not None:
                    set_seed(settings.seed)  # python, numpy and torch (all devices), as transformers' own examples do
                if remaining > 0:
                    kwargs = ({"pad_token_id": batch.pad_id} | settings.generate_kwargs()
                              | {"max_new_tokens": remaining} | generate_kwargs)
                    step_recorder = StepRecorder(candidates)
                    sampler = _RowSampler.replacing(settings, kwargs, len(fed), self.device, step_recorder)
                    # the step recorder must see the scores sampled from: it does where it is the last processor
                    # before the choice (greedy, or our seeded sampler); transformers' own sampling puts its warpers
                    # after it
                    online = sampler is not None or not kwargs.get("do_sample") and \
                        not self._processors_after(kwargs)
                    if online and sampler is None:
                        kwargs["logits_processor"] = LogitsProcessorList([*(kwargs.get("logits_processor") or []),
                                                                          step_recorder])
                    if ahead is not None:  # it changes no score: first or last, the same
                        kwargs["logits_processor"] = LogitsProcessorList([ahead,
                                                                          *(kwargs.get("logits_processor") or [])])
                    with _hooked(self.model, step_recorder.hook if online else None):
                        out = self.model.generate(batch.ids, attention_mask=batch.mask, return_dict_in_generate=True,
                                                  output_logits=not online, output_scores=not online,
                                                  streamer=streamer, **kwargs)
                    generated_at = time.perf_counter()
                    hidden.paused = True  # the last token predicts no step
                    self._read_last_token(out, batch)
                    hidden.paused = False
                    recorder.finish_values()  # from the values the cache holds, before it goes
                    read = out.sequences.shape[1]  # positions every layer has read
                    stats = step_recorder.stats
                    if online:  # the last step's tokens: no processor call came after them
                        stats.choose(out.sequences[:, -1])
                    else:  # the steps from what generate kept
                        for s, (logits, scores) in enumerate(zip(out.logits, out.scores)):
                            stats.add(logits, scores)
                            stats.choose(out.sequences[:, batch.width + s])
                    read_ids, sequences, stats = out.sequences, out.sequences.tolist(), stats.host()
                    del out  # its KV cache (48 MB at 1,024 tokens) is not needed by what follows
                else:  # only the forced token: nothing is generated after it
                    self.model(batch.ids, attention_mask=batch.mask, use_cache=False, logits_to_keep=1)
                    generated_at = time.perf_counter()
                    read, read_ids, sequences = batch.width, batch.ids, batch.ids.tolist()
                    stats = StepStats(candidates).host()
                    streamer.end()
                rows = []
                for row in range(len(fed)):
                    n_prompt, n_fed, pad = len(prompts[row]), len(fed[row]), batch.pads[row]
                    token_ids = sequences[row][pad:]
                    token_ids = token_ids[: n_fed + _until_end(token_ids[n_fed:], eos)]
                    n_steps = len(token_ids) - n_fed
                    prompt = None if hidden.prompt is None else hidden.prompt[row, pad:]
                    log_probs = stats["log_prob"][:n_steps, row] if n_steps else ()
                    # the forced one's from the states
                    surprisal = self._surprisal(prompt, token_ids, n_fed, log_probs,
                                                None if ahead is None else ahead.log_probs(row))
                    steps = steps_of(stats, row, n_steps, token_ids, n_fed, self.decode_token)
                    if forced is not None:  # the forced token's distribution is the model's at the position before it
                        if prompt is None:
                            raise SettingsError(f"cannot branch {self.name}: its decoder blocks or final norm were not "
                                                f"found")
                        first = final_logits(self.model, prompt[n_prompt - 1 : n_prompt], self.anatomy)
                        only = torch.full_like(first, -torch.inf)
                        only[0, forced] = 0.0
                        own = build_steps(token_ids[:n_fed], n_prompt, [first], [only], self.decode_token, candidates)
                        own[0].sampling_top_k = own[0].sampling_top_k[:1]  # drawn from all on the forced token
                        steps = own + [replace(step, index=step.index + 1) for step in steps]
                    rows.append((token_ids, n_prompt, steps, surprisal, pad, precisions[row]))
            if hidden.reread and lens:
                notes.append(f"No logit lens: {self.name} reads the whole text again at every step (it keeps no KV "
                             f"cache), so its positions are not followed.")
            used = settings.as_dict() | {"chat": chat, "candidates": candidates, "lens": lens,
                                         "ablate": [list(pair) for pair in ablate]}
            used |= {k: v for k, v in generate_kwargs.items() if isinstance(v, (int, float, str, bool, list))}
            traces = [self._build_trace(token_ids, n_prompt, recorder, steps, used | {"precision": row_precision},
                                        {"generate": generated_at - started}, surprisal, None, list(notes), row=row,
                                        start=pad, read=read, precision=row_precision)
                      for row, (token_ids, n_prompt, steps, surprisal, pad, row_precision) in enumerate(rows)]
            pending = hidden.positions and not hidden.reread
            for row, trace in enumerate(traces):
                trace.lens_pending = bool(pending)
                if on_capture is not None:  # what the first views need is here: the lens comes after
                    on_capture(*([names[row]] if names is not None else []), trace)
            # the lens of every row at once, after the recording (it reads the kept block outputs only): the rows
            # share each tile of the unembedding
            if on_status is not None and pending:
                on_status("reading the logit lens")
            spec = [(row, pad, token_ids) for row, (token_ids, _, _, _, pad, _) in enumerate(rows)]
            with _foreign_errors(self.name, raised), torch.inference_mode():
                lenses = self._lenses(hidden, spec, candidates, progress, ahead, read_ids)
                shares = self._attributions(writers, hidden, spec)
        finally:
            if ahead is not None:
                ahead.close()
        ended = time.perf_counter()
        for row, (trace, analysed) in enumerate(zip(traces, lenses)):
            trace.lens, trace.lens_pending = analysed, False
            self._attach(trace, shares[row])
            trace.timings |= {"lens": ended - generated_at, "total": ended - started}
            if on_trace is not None:
                on_trace(*([names[row]] if names is not None else []), trace)
        return traces

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

    def trace(self, text: str | list[str], *, chat: bool = False, lens: str | None = None, candidates: int = 10,
              ablate: list[tuple[int, int]] | None = None, precision: str = "auto", keep_values: bool = False,
              batch_size: int = 8, progress: bool = True) -> Trace | list[Trace]:
        """Read `text` in one forward pass and capture its attention, positions and surprisal (no generated
        steps); lens="all" adds a logit lens at every position, `ablate` switches (layer, head) pairs off.
        A list of texts gives a list of traces, read `batch_size` at a time (left-padded), each equal to the trace
        of its text alone."""
        prompts = self._prompts(text, chat, 0)
        made = self.trace_ids(prompts, lens=lens, candidates=candidates, ablate=ablate, precision=precision,
                              keep_values=keep_values, batch_size=batch_size, progress=progress, chat=chat)
        return made if isinstance(text, (list, tuple)) else made[0]

    def trace_ids(self, token_ids: list[int] | list[list[int]], *, lens: str | None = None, candidates: int = 10,
                  ablate: list[tuple[int, int]] | None = None, precision: str = "auto", keep_values: bool = False,
                  batch_size: int = 8, progress: bool = True, chat: bool = False) -> Trace | list[Trace]:
        """`trace` of token ids instead of a text (all of them are read as they are, with no special tokens
        added), or of a list of such lists (a list of traces)."""
        check_lens(lens, generating=False)
        _check_candidates(candidates)
        ablate = self._check_ablate(ablate)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SettingsError(f"batch_size must be a whole number ≥ 1, not {batch_size!r}")
        many = isinstance(token_ids, (list, tuple)) and bool(token_ids) and isinstance(token_ids[0], (list, tuple))
        rows = [self._checked_ids(ids) for ids in token_ids] if many else [self._checked_ids(token_ids)]
        for ids in rows:
            check_length(len(ids), 0, self.context_length, self.name)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        traces: list[Trace | None] = [None] * len(rows)
        options = {"lens": lens, "candidates": candidates, "ablate": ablate, "precision": precision,
                   "keep_values": keep_values, "progress": progress, "chat": chat}
        for first in range(0, len(order), batch_size):
            chunk = order[first : first + batch_size]
            for i, trace in zip(chunk, self._read_rows([rows[i] for i in chunk], **options)):
                traces[i] = trace
        return traces if many else traces[0]

    @_taking_turns
    def _read_rows(self, rows: list[list[int]], *, lens, candidates, ablate, precision, keep_values, progress,
                   chat) -> list[Trace]:
        """Read each of `rows` (token ids) in one left-padded forward pass, with capture."""
        batch = _Batch(rows, _pad_token_id(self), self.device)
        precisions = [self._choose_precision(precision, len(ids), keep_values) for ids in rows]
        recorder = self._recorder(max(precisions, key=_WIDTH.get), batch.width, keep_values, ablate)
        notes = self._lens_notes(lens) or ([] if self.anatomy.found else
                                           [f"No prompt surprisal: {self.anatomy.problem}."])
        hidden = HiddenStates(self.anatomy, lens, batch.width, prompt_states=True,
                              capacity=batch.width if lens else 0)
        writers = Writers(self.model, hidden)
        started = time.perf_counter()
        made = []
        with _foreign_errors(self.name), torch.inference_mode(), recording(self.model, recorder), hidden.hooked(), \
                writers.hooked():
            # logits at the last position only: all of them would be T × vocabulary floats (400 MB at 2,048)
            self.model(batch.ids, attention_mask=batch.mask, use_cache=False, logits_to_keep=1,
                       **self._positions(batch, batch.mask))
            forward_at = time.perf_counter()
            for row, ids in enumerate(rows):
                pad = batch.pads[row]
                prompt = None if hidden.prompt is None else hidden.prompt[row, pad:]
                made.append((ids, self._surprisal(prompt, ids, len(ids), []), pad, precisions[row]))
            spec = [(row, pad, ids) for row, (ids, _, pad, _) in enumerate(made)]
            lenses = self._lenses(hidden, spec, candidates, progress)
            shares = self._attributions(writers, hidden, spec)
        timings = {"forward": forward_at - started, "lens": time.perf_counter() - forward_at}
        settings = {"chat": chat, "candidates": candidates, "lens": lens, "ablate": [list(pair) for pair in ablate]}
        traces = [self._build_trace(ids, len(ids), recorder, [], settings | {"precision": row_precision}, timings,
                                    surprisal, analysed, list(notes), row=row, start=pad, read=batch.width,
                                    precision=row_precision)
                  for row, ((ids, surprisal, pad, row_precision), analysed) in enumerate(zip(made, lenses))]
        for trace, share in zip(traces, shares):
            self._attach(trace, share)
        return traces

    def _surprisal(self, prompt_states, token_ids: list[int], n_prompt: int, step_log_probs,
                   prompt_log_probs: torch.Tensor | None = None) -> np.ndarray:
        """-ln p(token_i | tokens before i), float32 [T], NaN at 0: the prompt's from the last block's states
        (or their `prompt_log_probs`, already read), the generated tokens' from their log-probabilities under
        generate's own raw logits."""
        out = np.full(len(token_ids), np.nan, dtype=np.float32)
        if n_prompt > 1 and prompt_log_probs is not None:
            out[1:n_prompt] = -prompt_log_probs.cpu().numpy()
        elif n_prompt > 1 and prompt_states is not None:  # None: a model whose blocks we could not hook
            targets = torch.tensor(token_ids[1:n_prompt], device=prompt_states.device)
            states = prompt_states[: n_prompt - 1]
            out[1:n_prompt] = -next_token_log_probs(self.model, self.anatomy, states, targets).cpu().numpy()
        if len(step_log_probs):
            out[n_prompt : n_prompt + len(step_log_probs)] = -np.asarray(step_log_probs)
        return out

    def _lenses(self, hidden: HiddenStates, rows: list[tuple[int, int, list[int]]], k: int, progress: bool,
                ahead: LensAhead | None = None, read_ids: torch.Tensor | None = None):
        """The logit lens of each (batch row, its left padding, its token ids) of `rows`, from what `hidden` kept,
        all read in one pass over the unembedding (or by `ahead` as the run went, `read_ids` the batch's ids);
        None for a row without one (no lens asked for, or none of its positions kept). A row keeps its own
        positions: none of its padding, none after its last token (and for "steps", not its last token, which
        predicts no step)."""
        out: list[LogitLens | None] = [None] * len(rows)
        if hidden.reread or not hidden.positions:
            return out
        parts, owners, spans = [], [], []
        for i, (row, pad, token_ids) in enumerate(rows):
            last = len(token_ids) - (2 if hidden.lens == "steps" else 1)
            own = [p - pad for p in hidden.positions]
            keep = [j for j, p in enumerate(own) if 0 <= p <= last]
            if keep:
                parts.append((hidden.states(row)[:, keep[0] : keep[-1] + 1], own[keep[0] : keep[-1] + 1], token_ids))
                owners.append(i)
                spans.append((row, slice(keep[0], keep[-1] + 1)))
        if not parts:
            return out
        bar = tqdm(total=1, desc="logit lens", unit="row", disable=not progress)

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            stats = None
            if ahead is not None:  # each cell [L, B, P, ...]: the parts' own, in build_lenses's order of rows
                grid = ahead.finish(read_ids, advance)
                stats = tuple(torch.cat([x[:, row, span] for row, span in spans], dim=1).flatten(0, 1) for x in grid)
            for i, lens in zip(owners, build_lenses(self.model, self.anatomy, parts, k, self.decode_token, advance,
                                                    stats)):
                out[i] = lens
        finally:
            bar.close()
        return out

    def _attributions(self, writers: Writers, hidden: HiddenStates, rows: list[tuple[int, int, list[int]]]) -> list:
        """Each row's logit attribution (explorer/capture/attribution.py) at its lens's positions, or a sentence
        saying why it has none, or None where no lens was asked for."""
        if hidden.reread or not hidden.positions or hidden.lens is None:
            return [None] * len(rows)
        if not writers.active or writers.heads is None or writers.embedded is None or \
                set(writers.filled) | {writers.embedded_filled} != {hidden.filled[0]}:
            return [writers.problem or "the blocks' writers were not all seen at the lens's positions"] * len(rows)
        out = []
        for row, pad, token_ids in rows:
            own = [p - pad for p in hidden.positions]
            keep = [j for j, p in enumerate(own) if 0 <= p < len(token_ids)]
            if not keep:
                out.append(None)
                continue
            span = slice(keep[0], keep[-1] + 1)
            out.append(attribute(self.model, self.anatomy, writers, hidden.states(row)[:, span],
                                 writers.embedded[row, span], writers.heads[:, row, span], own[span], token_ids))
        return out

    def _attach(self, trace: Trace, share) -> None:
        if isinstance(share, str):
            trace.notes.append(f"No logit attribution: {share}.")
        elif share is not None:  # of the logit before a final soft-cap, where the model has one (its parts add up)
            trace.attribution = share

    def _recorder(self, precision: str, n_positions: int, keep_values: bool, ablate=()) -> AttentionRecorder:
        """A recorder with room for `n_positions` positions of every layer."""
        return AttentionRecorder(PRECISIONS[precision], keep_values, capacity=n_positions,
                                 n_layers=self.model.config.num_hidden_layers, ablate=ablate)

    def _positions(self, batch: _Batch, mask: torch.Tensor, last: int | None = None) -> dict:
        """position_ids for a left-padded batch (each row counts from its first token), as `generate` makes them;
        nothing for a batch without padding, or a model that takes none (ALiBi models read the mask)."""
        if not any(batch.pads) or not self._takes_positions:
            return {}
        positions = (mask.long().cumsum(-1) - 1).clamp_(min=0)
        return {"position_ids": positions if last is None else positions[:, -last:]}

    @property
    def _takes_positions(self) -> bool:
        return "position_ids" in inspect.signature(self.model.forward).parameters

    def _eos_ids(self, generate_kwargs: dict) -> set[int]:
        """The end-of-text token ids a generation stops at."""
        eos = generate_kwargs.get("eos_token_id", self.model.generation_config.eos_token_id)
        if isinstance(eos, torch.Tensor):
            eos = eos.tolist()
        return set(eos) if isinstance(eos, (list, tuple, set)) else set() if eos is None else {int(eos)}

    def _read_last_token(self, out, batch: _Batch) -> None:
        """The last generated token was never read by the model: one more step gives its attention row."""
        sequence = out.sequences
        mask = torch.cat([batch.mask, batch.mask.new_ones((len(sequence), sequence.shape[1] - batch.width))], dim=1)
        # the KV cache is `cache` since transformers 5.25 (`past_key_values`, its old name, goes in 5.40)
        kept = dict(out.items())  # its fields that are set, by their own names (no renaming, no warning)
        cache = kept.get("cache", kept.get("past_key_values"))
        if cache is None:  # a model that keeps no KV cache (MPT) reads the whole sequence again
            self.model(sequence, attention_mask=mask, use_cache=False, **self._positions(batch, mask))
            return
        takes = inspect.signature(self.model.forward).parameters
        # its logits are not needed: an empty index skips the unembedding (a fifth of a small model's decode step)
        skip = ({"logits_to_keep": torch.empty(0, dtype=torch.long, device=sequence.device)}
                if "logits_to_keep" in takes else {})
        self.model(sequence[:, -1:], attention_mask=mask, use_cache=True, **self._positions(batch, mask, last=1),
                   **{"cache" if "cache" in takes else "past_key_values": cache}, **skip)

    def _processors_after(self, kwargs: dict) -> bool:
        """Whether transformers puts processors after ours even when decoding greedily (watermarking, a final
        renormalisation): then the scores sampled from are only those `generate` returns."""
        config = self.model.generation_config
        return (kwargs.get("watermarking_config", getattr(config, "watermarking_config", None)) is not None
                or bool(kwargs.get("renormalize_logits", getattr(config, "renormalize_logits", False))))

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
                     notes: list[str], *, row: int = 0, start: int = 0, read: int | None = None,
                     precision: str | None = None) -> Trace:
        """The trace of batch row `row`, whose tokens start after `start` positions of padding; `read` is how
        many positions every layer read in the run."""
        return Trace(
            tokens=[self.decode_token(i) for i in token_ids],
            token_ids=token_ids,
            n_prompt=n_prompt,
            layers=recorder.layers(len(token_ids), row, start, PRECISIONS.get(precision), read),
            steps=steps,
            positional=read_positional(self.model, len(token_ids), self.layer_positions),
            model=self.info(),
            settings=settings,
            timings=timings,
            pieces=self.tokenizer.convert_ids_to_tokens(token_ids),
            surprisal=surprisal,
            lens=lens,
            value_norms=recorder.value_norms(len(token_ids), row, start),
            notes=notes,
        )

    def __repr__(self) -> str:
        return f"LanguageModel({self.name!r}, device={str(self.device)!r}, dtype={self.model.dtype})"


@contextmanager
def _hooked(model, hook):
    """`hook` as a forward hook on the model itself while inside (none for None)."""
    handle = None if hook is None else model.register_forward_hook(hook)
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


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

