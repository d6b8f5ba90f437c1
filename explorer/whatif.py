"""What-if, on the trace side: what a branch asks the model for, and how its answer is grafted onto the parent.

A branch at step k of a trace is generated as a continuation: the parent's tokens before the step are its
prompt, the forced token its first new token. `graft` then gives it back the parent's prompt, the parent's
steps before k and their logit lens, so that it reads as the parent's sibling. Torch-free: the dashboard's
kernels branch through the generation service with the same two functions as a local model does.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .errors import SettingsError
from .trace import LogitAttribution, LogitLens, Step, Trace, new_id

# settings of a trace that `generate` takes by name; the others were passed through to transformers' generate
_OWN = ("temperature", "top_k", "top_p", "seed", "chat", "candidates", "lens", "precision")


def branch_request(trace: Trace, step: int) -> tuple[list[int], dict]:
    """The prefix token ids and the settings (keywords of `generate_from_ids`) of a branch at `step`."""
    if not trace.steps:
        raise SettingsError("this trace has no generated steps to branch from (it is a read text)")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < trace.n_generated:
        raise SettingsError(f"step must be a generated step 0..{trace.n_generated - 1}, not {step!r}")
    used = dict(trace.settings)
    settings = {name: used[name] for name in _OWN if name in used}
    settings["max_new_tokens"] = int(used.get("max_new_tokens", trace.n_generated)) - step
    settings["ablate"] = [tuple(pair) for pair in used.get("ablate", [])]
    settings["keep_values"] = any(getattr(layer, "value", None) is not None for layer in trace.layers)
    extra = {k: v for k, v in used.items() if k not in (*_OWN, "max_new_tokens", "ablate")}
    if "min_new_tokens" in extra:  # counted from the branch's own first new token
        extra["min_new_tokens"] = max(0, int(extra["min_new_tokens"]) - step)
    return list(trace.token_ids[: trace.steps[step].position]), settings | extra


def graft(parent: Trace, step: int, continuation: Trace) -> Trace:
    """The branch: `continuation` (prompt = the parent's tokens before `step`, first step = the forced token)
    with the parent's prompt, steps before `step` and their lens put back, linked to `parent`."""
    at = parent.steps[step].position
    if continuation.n_prompt != at or continuation.token_ids[:at] != parent.token_ids[:at]:
        raise ValueError("the continuation does not start from the parent's prefix")
    steps = [*parent.steps[:step], *(replace(s, index=s.index + step) for s in continuation.steps)]
    settings = dict(continuation.settings)
    for name in ("max_new_tokens", "min_new_tokens"):
        if name in parent.settings:
            settings[name] = parent.settings[name]
    return replace(
        continuation,
        n_prompt=parent.n_prompt,
        steps=steps,
        settings=settings,
        lens=_joined_lens(parent.lens, continuation.lens),
        attribution=_joined_attribution(parent.attribution, continuation.attribution),
        id=new_id(),
        parent=parent,
        parent_id=parent.id,
        branch_step=step,
    )


def _joined_lens(before: LogitLens | None, after: LogitLens | None) -> LogitLens | None:
    """The parent's lens at the positions before the continuation's, then the continuation's."""
    if after is None or before is None:
        return after
    first = after.positions[0] if len(after.positions) else np.iinfo(np.int32).max
    keep = before.positions < first
    k = min(before.k, after.k)
    return LogitLens(
        positions=np.concatenate([before.positions[keep], after.positions]),
        top_ids=np.concatenate([before.top_ids[:, keep, :k], after.top_ids[:, :, :k]], axis=1),
        top_probs=np.concatenate([before.top_probs[:, keep, :k], after.top_probs[:, :, :k]], axis=1),
        next_prob=np.concatenate([before.next_prob[:, keep], after.next_prob], axis=1),
        next_rank=np.concatenate([before.next_rank[:, keep], after.next_rank], axis=1),
        words=before.words | after.words,
    )


def _joined_attribution(before: LogitAttribution | None, after: LogitAttribution | None) -> LogitAttribution | None:
    """The parent's attribution at the positions before the continuation's, then the continuation's."""
    if after is None or before is None:
        return after
    first = after.positions[0] if len(after.positions) else np.iinfo(np.int32).max
    keep = before.positions < first
    return LogitAttribution(**{name: np.concatenate([array[keep], getattr(after, name)])
                               for name, array in before.tensors().items()})


def rescore(lm, trace: Trace, step: int, ablate) -> Step:
    """Step `step` of `trace` again with the heads `ablate` (list of (layer, head)) switched off: the same token,
    with the probability, rank and top-k the changed model gives it. One forward pass over the step's prefix, so
    switching heads off shows its effect at once. `lm` is a LanguageModel or a RemoteModel."""
    prefix, settings = branch_request(trace, step)
    settings.update(max_new_tokens=1, lens=None, ablate=[tuple(pair) for pair in ablate])
    settings.pop("min_new_tokens", None)
    again = lm.generate_from_ids(prefix, forced=trace.steps[step].token_id, progress=False, **settings)
    return replace(again.steps[0], index=step)
