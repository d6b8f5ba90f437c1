"""What-if in the explorer: branch at a step, switch heads off and see what changes, generate with heads off.

    panel = WhatIfPanel(lm, selection, current=lambda: explorer.trace, add_trace=explorer.add_trace)

The model is an object from outside with `branch`, `generate_from_ids` (a LanguageModel, or a RemoteModel in a
dashboard kernel, which has no torch): this module never imports torch. Every call to the model runs in one
background thread, one call at a time (neither a model's hooks nor a service's socket take two at once), so the
kernel keeps answering the page; progress and errors show in the panel's status line, one sentence each.
Switching a head off re-scores the selected step (`whatif.rescore`, one forward pass) and shows its next-token
probabilities before and after side by side.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable

import anywidget
import ipywidgets as widgets
import traitlets

from ... import whatif
from ...errors import ExplorerError
from ...trace import Step, Trace
from .. import frontend
from .branch_tree import heads_label, heads_off
from ..selection import FollowsSelection, Selection
from ..frontend.tokens_html import visible


class Jobs:
    """Work for the model, run one at a time in a background thread that ends when there is none left.
    A job submitted with a `kind` replaces a waiting job of that kind (only the latest re-scoring matters).
    Each job holds `model_lock` while it runs: a caller that uses the same model elsewhere (a dashboard's
    Generate) holds it too, so that two calls never reach the model at once."""

    def __init__(self, in_background: bool = True):
        self.in_background = in_background
        self.model_lock = threading.RLock()
        self._queue: list[tuple[str | None, Callable[[], None]]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, work: Callable[[], None], kind: str | None = None) -> None:
        if not self.in_background:
            with self.model_lock:
                work()
            return
        with self._cond:
            if kind is not None:
                self._queue = [job for job in self._queue if job[0] != kind]
            self._queue.append((kind, work))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="what-if", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._thread = None
                    self._cond.notify_all()
                    return
                _, work = self._queue.pop(0)
            with self.model_lock:
                work()  # each job reports its own errors

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every job submitted is done; False if `timeout` came first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._thread is None, timeout)


def _side(step: Step, label: str) -> dict:
    return {"label": label, "prob": step.prob, "rank": step.rank,
            "top_k": [[c.token, c.token_id, c.prob] for c in step.top_k]}


class ProbabilityChange(anywidget.AnyWidget):
    """One step's next-token probabilities before and after heads were switched off: the step's token p and rank
    before → after, and both top-k lists side by side as bars (whatif_panel.js)."""

    _esm = frontend.module("whatif/whatif_panel.js")
    _css = frontend.stylesheet("whatif/whatif_panel.css")
    change = traitlets.Dict().tag(sync=True)  # step, token, token_id, before, after (None while computing), note


class WhatIfPanel(FollowsSelection, widgets.VBox):
    """Switch the selected head off, restore, generate with heads off; the before/after of the selected step;
    and the status line of every what-if job, branching included (`branch`, which the stepper's clicks call)."""

    def __init__(self, lm, selection: Selection, current: Callable[[], Trace | None],
                 add_trace: Callable[[Trace], None], in_background: bool = True):
        super().__init__()
        self.add_class("whatif-panel")
        self.lm = lm
        self.selection = selection
        self.current = current
        self.add_trace = add_trace
        self.jobs = Jobs(in_background)
        self.heads_off: list[tuple[int, int]] = []  # switched off here, on top of the trace's own
        self.after: Step | None = None  # the selected step as re-scored with the heads off (shown as "after")
        self._busy = ""  # what a branch or a generation running now is doing, "" when none is

        self.switch_off_button = widgets.Button(layout=widgets.Layout(width="auto"))
        self.switch_off_button.add_class("whatif-switch-off")
        self.switch_off_button.on_click(lambda _: self._switch_off_selected())
        self.off_list = widgets.HTML().add_class("whatif-heads-off")
        self.restore_button = widgets.Button(description="Restore all", layout=widgets.Layout(width="auto"))
        self.restore_button.add_class("whatif-restore")
        self.restore_button.on_click(lambda _: self.restore_all())
        self.generate_button = widgets.Button(description="Generate with these heads off",
                                              layout=widgets.Layout(width="auto"))
        self.generate_button.add_class("whatif-generate")
        self.generate_button.on_click(lambda _: self.generate_with_heads_off())
        self.progress = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width="160px",
                                                                                         display="none"))
        self.status = widgets.HTML().add_class("whatif-status")
        self.comparison = ProbabilityChange(layout=widgets.Layout(display="none"))
        bar = widgets.HBox([self.switch_off_button, self.off_list, self.restore_button, self.generate_button],
                           layout=widgets.Layout(align_items="center", flex_flow="row wrap"))
        self.children = [bar, widgets.HBox([self.progress, self.status], layout=widgets.Layout(align_items="center")),
                         self.comparison]
        self._show_controls()
        self.follow(selection, self._on_selection, ["layer", "head", "step"])

    # --- the state shown
    def effective_heads(self, trace: Trace | None = None) -> list[tuple[int, int]]:
        """The heads off for a re-scoring or a generation: the trace's own and those switched off here."""
        trace = trace if trace is not None else self.current()
        own = heads_off(trace) if trace is not None else []
        return sorted(set(own) | set(self.heads_off))

    def _show_controls(self) -> None:
        sel, trace = self.selection, self.current()
        head = (sel.layer, sel.head) if sel.head is not None else None
        button = self.switch_off_button
        if head is None:
            button.description, button.disabled = "Switch off a head", True
            button.tooltip = "pick one head (not the mean of heads) in the stepper, the heatmap or the heads map"
        elif trace is not None and head in self.effective_heads(trace):
            button.description, button.disabled = f"{heads_label([head])} is off", True
            button.tooltip = "this head is switched off already"
        else:
            button.description, button.disabled = f"Switch off head {heads_label([head])}", False
            button.tooltip = f"layer {head[0]}, head {head[1]}: zero its output and re-score the selected step"
        own = heads_off(trace) if trace is not None else []
        listed = f"heads off: <b>{heads_label(self.heads_off) if self.heads_off else 'none'}</b>"
        if own:
            listed += f" <small>(this trace was generated with {heads_label(own)} off)</small>"
        elif head is None and not self.heads_off:
            listed += " <small>(pick one head, not the mean of heads, to switch it off)</small>"
        self.off_list.value = f"<span>{listed}</span>"
        self.restore_button.disabled = not self.heads_off
        self.generate_button.disabled = not self.heads_off or bool(self._busy) or trace is None or not trace.steps

    def _say(self, text: str, error: bool = False) -> None:
        kind = "whatif-error" if error else "whatif-info"
        self.status.value = f"<span class='{kind}'>{html.escape(text)}</span>" if text else ""

    def _on_selection(self, change) -> None:
        self._show_controls()
        if change["name"] == "step" and self.comparison.layout.display != "none":
            self._rescore()

    def trace_changed(self, new_family: bool = False) -> None:
        """The explorer shows another trace: the controls and the before/after follow it. A new family (another
        prompt) starts with every head on."""
        if new_family:
            self.heads_off, self.after = [], None
            self.comparison.layout.display = "none"
        self._show_controls()
        if self.comparison.layout.display != "none":
            self._rescore()

    # --- heads off, and the selected step re-scored
    def switch_off(self, layer: int, head: int) -> None:
        """Switch head `head` of layer `layer` off and re-score the selected step."""
        if (layer, head) not in self.heads_off:
            self.heads_off = sorted([*self.heads_off, (int(layer), int(head))])
        self.comparison.layout.display = ""
        self._show_controls()
        self._rescore()

    def _switch_off_selected(self) -> None:
        if self.selection.head is not None:
            self.switch_off(self.selection.layer, self.selection.head)

    def restore_all(self) -> None:
        """Switch every head back on: the selected step shows its own probabilities again."""
        self.heads_off = []
        self._show_controls()
        self._rescore()

    def _step_shown(self, trace: Trace | None) -> int | None:
        if trace is None or not trace.steps:
            return None
        return min(max(self.selection.step, 0), trace.n_generated - 1)

    def _rescore(self) -> None:
        """Show the selected step before and after (the after computed in the background, the latest only)."""
        trace = self.current()
        step = self._step_shown(trace)
        if step is None:
            self.comparison.change = {"note": "heads off change generated steps: this trace has none"}
            return
        self._show_change(trace, step, None)
        self.jobs.submit(self._rescore_now, kind="rescore")

    def _rescore_now(self) -> None:
        trace = self.current()
        step = self._step_shown(trace)
        if step is None:
            return
        wanted = (trace.id, step, tuple(self.heads_off))
        heads = self.effective_heads(trace)
        try:  # no heads off besides the trace's own: its own step, without asking the model
            after = trace.steps[step] if heads == heads_off(trace) else whatif.rescore(self.lm, trace, step, heads)
        except ExplorerError as e:
            self._say(str(e), error=True)
            return
        except Exception as e:  # a thread's exception would otherwise go unseen
            self._say(f"Re-scoring failed: {type(e).__name__}: {e}", error=True)
            return
        now = self.current()
        if now is not None and (now.id, self._step_shown(now), tuple(self.heads_off)) == wanted:
            self._show_change(trace, step, after)

    def _show_change(self, trace: Trace, step: int, after: Step | None) -> None:
        s = trace.steps[step]
        own = heads_off(trace)
        before = "as generated" + (f" ({heads_label(own)} off)" if own else "")
        extra = sorted(set(self.heads_off) - set(own))
        if not self.heads_off:
            later = "all heads on again: as generated"
        elif not extra:
            later = f"with {heads_label(self.heads_off)} off: as generated (this trace has them off)"
        else:
            later = f"with {heads_label(self.heads_off)} off" + (" too" if own else "")
        self.after = after
        self.comparison.change = {
            "step": step, "token": visible(s.token), "token_id": s.token_id, "before": _side(s, before),
            "after": _side(after, later) if after is not None else None,
            "note": "" if after is not None else f"re-scoring step {step} with {heads_label(self.heads_off)} off …",
        }

    # --- new traces: a branch, a run with heads off
    def branch(self, step: int, token) -> None:
        """Branch the current trace at `step` with `token` (text, id or Candidate) in the background; the branch
        joins the family and is shown. A refusal (text of two tokens, say) is one sentence in the status line."""
        trace = self.current()
        if trace is None:
            return
        if self._busy:
            self._say(f"wait: still {self._busy}", error=True)
            return
        shown = visible(token if isinstance(token, str) else getattr(token, "token", str(token)))
        self._start(f"branching at step {step} with “{shown}”")

        def work() -> None:
            self._run(lambda **progress: self.lm.branch(trace, step, token, progress=False, **progress),
                      lambda made: f"branched at step {step}: “{visible(made.steps[step].token)}” "
                                   f"(p {made.steps[step].prob:.4f}) instead of “{visible(trace.steps[step].token)}”")

        self.jobs.submit(work)

    def generate_with_heads_off(self) -> None:
        """Generate the current trace's prompt again, with its settings and the heads off; the run joins the
        family beside the first trace and is shown."""
        trace = self.current()
        if trace is None or not trace.steps or not self.heads_off:
            return
        if self._busy:
            self._say(f"wait: still {self._busy}", error=True)
            return
        heads = self.effective_heads(trace)
        prompt, settings = whatif.branch_request(trace, 0)  # the prompt's ids and the trace's settings
        settings["ablate"] = heads
        self._start(f"generating with {heads_label(heads)} off")

        def work() -> None:
            self._run(lambda **progress: self.lm.generate_from_ids(prompt, progress=False, **settings, **progress),
                      lambda made: f"generated {made.n_generated} tokens with {heads_label(heads)} off")

        self.jobs.submit(work)

    def _start(self, doing: str) -> None:
        self._busy = doing
        self._show_controls()
        self.progress.value, self.progress.layout.display = 0, ""
        self._say(doing + " …")

    def _run(self, make: Callable[..., Trace], done: Callable[[Trace], str]) -> None:
        """Make a trace with progress in the status line, then add it to the family; errors become a sentence."""
        doing = self._busy

        def on_token(count: int, total: int, _text: str) -> None:
            self.progress.max, self.progress.value = max(1, total), count
            self._say(f"{doing} … {count} / {total} tokens")

        def on_status(sentence: str) -> None:
            self._say(f"{doing} … {sentence}")

        try:
            made = make(on_token=on_token, on_status=on_status)
        except ExplorerError as e:
            self._finish()
            self._say(str(e), error=True)
            return
        except Exception as e:  # keep the kernel and the page alive whatever happens
            self._finish()
            self._say(f"{doing} failed: {type(e).__name__}: {e}", error=True)
            return
        self._finish()
        try:
            self.add_trace(made)
        except Exception as e:
            self._say(f"the new trace could not be shown: {type(e).__name__}: {e}", error=True)
            return
        self._say(done(made))

    def _finish(self) -> None:
        self._busy = ""
        self.progress.layout.display = "none"
        self._show_controls()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every what-if job (branch, generation, re-scoring) is done; False if `timeout` came first."""
        return self.jobs.wait(timeout)


__all__ = ["Jobs", "ProbabilityChange", "WhatIfPanel"]
