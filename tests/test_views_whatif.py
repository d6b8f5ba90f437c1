"""What-if in the explorer, on the Python side: a click on a candidate branches as lm.branch does, a typed text of
two tokens is refused in a sentence, the tree follows the family's parents, steps and probabilities, heads off
show what whatif.rescore gives, a run with heads off joins the family, and none of it needs torch in the kernel."""

from __future__ import annotations

import pytest

import explorer
from conftest import make_tiny_lm, run_without_torch
from explorer import whatif
from explorer.views.whatif.branch_tree import percent
from explorer.views.explorer_view import ExplorerView
from explorer.views.steps.stepper_view import StepperView
from synthetic import synthetic_trace, with_analysis


@pytest.fixture(scope="module")
def lm():
    return make_tiny_lm("llama")


@pytest.fixture(scope="module")
def trace(lm):
    return lm.generate("What if", max_new_tokens=8, progress=False)


def stepper_of(view: ExplorerView) -> StepperView:
    (stepper,) = view.tabs.children[0].children
    return stepper


def runner_up(step):
    """The step's most likely candidate that is not its own token, and its index among the chips."""
    return next((i, c) for i, c in enumerate(step.top_k) if c.token_id != step.token_id)


def same_trace(a, b) -> None:
    assert a.token_ids == b.token_ids and a.n_prompt == b.n_prompt and a.branch_step == b.branch_step
    assert [s.token_id for s in a.steps] == [s.token_id for s in b.steps]
    assert [s.prob for s in a.steps] == pytest.approx([s.prob for s in b.steps], rel=1e-5)


def test_a_click_on_a_candidate_branches_as_lm_branch_does(lm, trace):
    view = ExplorerView(trace, lm=lm)
    added = []
    view.on_trace_added.append(added.append)
    assert view.family == [trace] and view.tree.layout.display == "none"  # one trace: no tree yet
    view.selection.step = 3
    stepper = stepper_of(view)
    assert stepper.candidates.clickable and stepper.candidates.tokens == [c.token for c in trace.steps[3].top_k]
    index, candidate = runner_up(trace.steps[3])
    stepper.candidates.selected = index  # what a click on the chip sends
    assert "branching at step 3" in view.whatif.status.value  # said before the model answers
    assert view.whatif.wait(60)
    assert len(view.family) == 2 and added == [view.family[1]]
    branch = view.family[1]
    assert branch.parent is trace and view.trace is branch
    same_trace(branch, lm.branch(trace, 3, candidate, progress=False))
    assert view.selection.step == 3  # shown where it diverges: the forced token is the new token
    shown = stepper_of(view)
    assert shown.trace is branch and shown.text.highlight == branch.steps[3].position
    assert shown.text.shown_text.endswith(candidate.token)
    assert "branched at step 3" in view.whatif.status.value and view.tree.layout.display == ""
    assert view.tree.current == branch.id


def test_a_typed_token_branches_and_two_tokens_are_refused_in_a_sentence(lm, trace):
    view = ExplorerView(trace, lm=lm)
    view.selection.step = 2
    stepper = stepper_of(view)
    stepper.branch_token.value = "ab"  # two bytes: two tokens of the tiny model's tokenizer
    stepper.branch_button.click()
    assert view.whatif.wait(60)
    assert "2 tokens" in view.whatif.status.value and "not one" in view.whatif.status.value
    assert "whatif-error" in view.whatif.status.value
    assert view.family == [trace] and view.trace is trace and stepper_of(view) is stepper  # nothing changed
    stepper.branch_token.value = ""
    stepper.branch_button.click()
    assert "type a token" in stepper.branch_note.value
    chosen = next(i for i, c in enumerate(trace.steps[2].top_k) if c.token_id == trace.steps[2].token_id)
    stepper.candidates.selected = chosen  # the token the trace has already: refused before asking the model
    assert "already" in stepper.branch_note.value and view.whatif.jobs.wait(0)
    assert view.family == [trace]
    stepper.branch_token.value = "Z"
    stepper.branch_button.click()
    assert view.whatif.wait(60)
    direct = lm.branch(trace, 2, "Z", progress=False)
    assert len(view.family) == 2 and view.trace.steps[2].token_id == lm.encode("Z")[-1]
    same_trace(view.trace, direct)


def test_without_a_model_the_candidates_are_not_clickable_and_a_hint_says_why(trace):
    view = ExplorerView(trace)
    stepper = stepper_of(view)
    assert view.whatif is None and not stepper.candidates.clickable and stepper.on_branch is None
    assert "needs a model" in stepper.branching.children[0].value
    stepper.candidates.selected = 1
    assert view.family == [trace] and view.trace is trace
    with pytest.raises(ValueError, match="needs a model"):
        view.branch(1, "Z")


def test_the_tree_follows_parents_branch_steps_and_probabilities(lm, trace):
    view = ExplorerView(trace, lm=lm)
    first = lm.branch(trace, 2, runner_up(trace.steps[2])[1], progress=False)
    second = lm.branch(first, 5, runner_up(first.steps[5])[1], progress=False)
    off = lm.generate("What if", max_new_tokens=8, ablate=[(1, 3), (0, 2)], progress=False)
    view.add_trace(first)
    view.add_trace(second, show=False)
    view.add_trace(off, show=False)
    assert view.trace is first and view.selection.step == 2
    nodes = {n["id"]: n for n in view.tree.nodes}
    assert [n["id"] for n in view.tree.nodes] == [trace.id, first.id, second.id, off.id]  # each after its parent
    assert nodes[trace.id]["parent"] is None and nodes[trace.id]["label"] == "original"
    for child, parent in ((first, trace), (second, first)):
        node, step = nodes[child.id], child.branch_step
        assert node["parent"] == parent.id and node["step"] == step
        assert node["depth"] == nodes[parent.id]["depth"] + 1
        assert node["prob"] == child.steps[step].prob and node["was_prob"] == parent.steps[step].prob
        assert node["token"] == child.steps[step].token and node["was_token"] == parent.steps[step].token
        assert node["label"] == (f"step {step}: “{child.steps[step].token}” {percent(child.steps[step].prob)} "
                                 f"vs “{parent.steps[step].token}” {percent(parent.steps[step].prob)}")
    assert nodes[off.id]["parent"] is None and nodes[off.id]["label"] == "heads off L0.H2, L1.H3"
    assert nodes[off.id]["heads_off"] == [[0, 2], [1, 3]]
    assert view.tree.current == first.id
    view.tree._on_msg(view.tree, {"kind": "select", "id": trace.id}, [])  # a click on the first node
    assert view.trace is trace and view.tree.current == trace.id and view.selection.step == 2
    assert stepper_of(view).trace is trace
    view.tree._on_msg(view.tree, {"kind": "select", "id": "no such id"}, [])
    assert view.trace is trace


def test_percent_reads_at_every_size():
    assert [percent(p) for p in (0.8, 0.123, 0.034, 0.00123)] == ["80%", "12%", "3.4%", "0.12%"]


def test_a_head_off_shows_what_rescore_gives_and_restore_all_the_steps_own(lm, trace):
    view = ExplorerView(trace, lm=lm)
    panel = view.whatif
    view.selection.step = 4
    view.selection.head = None
    assert panel.switch_off_button.disabled  # the mean of heads is not a head to switch off
    view.selection.layer, view.selection.head = 1, 2
    assert panel.switch_off_button.description == "Switch off head L1.H2" and not panel.switch_off_button.disabled
    assert panel.comparison.layout.display == "none" and panel.generate_button.disabled
    panel.switch_off_button.click()
    assert panel.wait(60)
    expected = whatif.rescore(lm, trace, 4, [(1, 2)])
    change = panel.comparison.change
    assert panel.comparison.layout.display == "" and change["step"] == 4
    assert change["after"]["prob"] == pytest.approx(expected.prob, rel=1e-6)
    assert change["after"]["rank"] == expected.rank
    assert [t[1] for t in change["after"]["top_k"]] == [c.token_id for c in expected.top_k]
    assert [t[2] for t in change["after"]["top_k"]] == pytest.approx([c.prob for c in expected.top_k], rel=1e-6)
    assert change["before"]["prob"] == trace.steps[4].prob and change["before"]["label"] == "as generated"
    assert panel.switch_off_button.description == "L1.H2 is off" and panel.switch_off_button.disabled
    assert "L1.H2" in panel.off_list.value and not panel.restore_button.disabled
    view.selection.layer, view.selection.head = 0, 3  # a second head, then another step
    panel.switch_off_button.click()
    view.selection.step = 6
    assert panel.wait(60)
    expected = whatif.rescore(lm, trace, 6, [(0, 3), (1, 2)])
    assert panel.comparison.change["step"] == 6 and panel.after.prob == pytest.approx(expected.prob, rel=1e-6)
    assert panel.comparison.change["after"]["label"] == "with L0.H3, L1.H2 off"
    panel.restore_button.click()
    assert panel.wait(60)
    assert panel.heads_off == [] and panel.after == trace.steps[6]
    assert panel.comparison.change["after"]["prob"] == trace.steps[6].prob
    assert panel.restore_button.disabled and "none" in panel.off_list.value


def test_generate_with_heads_off_adds_a_run_beside_the_first_trace(lm, trace):
    view = ExplorerView(trace, lm=lm)
    panel = view.whatif
    panel.switch_off(1, 0)
    panel.switch_off(0, 1)
    assert not panel.generate_button.disabled
    panel.generate_button.click()
    assert panel.wait(60)
    run = view.trace
    assert len(view.family) == 2 and run is view.family[1] and run.parent is None
    assert run.settings["ablate"] == [[0, 1], [1, 0]]
    again = lm.generate("What if", max_new_tokens=8, ablate=[(0, 1), (1, 0)], progress=False)
    assert run.token_ids == again.token_ids
    assert [s.prob for s in run.steps] == pytest.approx([s.prob for s in again.steps], rel=1e-5)
    assert view.tree.nodes[1]["label"] == "heads off L0.H1, L1.H0" and view.tree.nodes[1]["depth"] == 0
    assert "generated 8 tokens with L0.H1, L1.H0 off" in panel.status.value
    # the run shown has its own heads off: the panel's heads come on top, "before" says so
    assert panel.comparison.change["before"]["label"] == "as generated (L0.H1, L1.H0 off)"
    panel.restore_all()
    panel.switch_off(1, 3)
    assert panel.wait(60)
    expected = whatif.rescore(lm, run, view.selection.step, [(0, 1), (1, 0), (1, 3)])
    assert panel.after.prob == pytest.approx(expected.prob, rel=1e-6)


def test_a_family_saves_in_one_file_and_shows_again(lm, trace, tmp_path):
    view = ExplorerView(trace, lm=lm)
    view.add_trace(lm.branch(trace, 1, runner_up(trace.steps[1])[1], progress=False))
    view.save_family(tmp_path / "family.trace")
    loaded = explorer.load_traces(tmp_path / "family.trace")
    again = ExplorerView()
    again.set_family(loaded)
    assert [t.id for t in again.family] == [t.id for t in view.family] and again.trace is loaded[0]
    assert [n["label"] for n in again.tree.nodes] == [n["label"] for n in view.tree.nodes]
    assert again.tree.layout.display == ""


def test_an_unrelated_trace_starts_a_new_family(lm, trace):
    view = ExplorerView(trace, lm=lm)
    added = []
    view.on_trace_added.append(added.append)
    view.whatif.switch_off(1, 1)
    other = lm.generate("Other", max_new_tokens=3, progress=False)
    view.set_trace(other)
    assert view.family == [other] and added == [other] and view.whatif.heads_off == []
    assert view.tree.layout.display == "none" and view.whatif.comparison.layout.display == "none"
    view.whatif.switch_off(0, 2)
    view.set_family([trace])  # another family shown at once (the dashboard's session list): every head on again
    assert view.whatif.heads_off == [] and view.trace is trace


FAKE_LM = """
import dataclasses
from explorer.views.explorer_view import ExplorerView

class FakeModel:
    '''Records what the explorer asks; answers with copies of the trace (no torch anywhere).'''
    def __init__(self):
        self.calls = []
    def branch(self, trace, step, token, **kwargs):
        self.calls.append(('branch', step, getattr(token, 'token_id', token), sorted(kwargs)))
        return dataclasses.replace(trace, id='b' + trace.id, parent=trace, parent_id=trace.id, branch_step=step)
    def generate_from_ids(self, ids, forced=None, **settings):
        self.calls.append(('generate_from_ids', len(ids), forced, settings['ablate'], settings['max_new_tokens']))
        if forced is not None:  # whatif.rescore: one step, the same token with other probabilities
            step = next(s for s in trace.steps if s.token_id == forced)
            return dataclasses.replace(trace, steps=[dataclasses.replace(step, prob=0.25, rank=3)])
        return dataclasses.replace(trace, id='ablated', settings={**trace.settings, 'ablate': settings['ablate']})

fake = FakeModel()
view = ExplorerView(trace, lm=fake)
view.selection.step = 2
stepper = view.tabs.children[0].children[0]
stepper.candidates.selected = 1
assert view.whatif.wait(30), 'branch'
assert fake.calls[0][:3] == ('branch', 2, trace.steps[2].top_k[1].token_id), fake.calls
assert len(view.family) == 2 and view.trace.parent is trace
view.selection.layer, view.selection.head = 1, 0
view.whatif.switch_off_button.click()
assert view.whatif.wait(30), 'rescore'
assert view.whatif.comparison.change['after']['prob'] == 0.25 and view.whatif.after.rank == 3
view.whatif.generate_button.click()
assert view.whatif.wait(30), 'generate'
assert ('generate_from_ids', trace.n_prompt, None, [(1, 0)], trace.n_generated) in fake.calls, fake.calls
assert view.trace.settings['ablate'] == [(1, 0)] and len(view.family) == 3
"""


def test_the_explorer_asks_a_stand_in_model_and_never_imports_torch(tmp_path):
    trace = with_analysis(synthetic_trace(30, n_layers=2, n_heads=2), n_generated=6)
    run_without_torch(trace, tmp_path, FAKE_LM)


def test_a_new_family_lets_the_old_one_go(lm):
    import gc
    import weakref

    view = ExplorerView(lm.generate("Old", max_new_tokens=4, progress=False), lm=lm)
    view.selection.head = 1
    view.whatif.switch_off(0, 1)
    view.branch(1, runner_up(view.trace.steps[1])[1])
    assert view.whatif.wait(60) and len(view.family) == 2
    old = [weakref.ref(t) for t in view.family]
    view.set_trace(lm.generate("New", max_new_tokens=4, progress=False))
    assert view.whatif.wait(60)
    gc.collect()
    assert all(ref() is None for ref in old)  # a long session does not keep every family alive


def test_through_the_generation_service_as_in_a_dashboards_kernel(lm, trace):
    """A RemoteModel (what a dashboard's kernel holds): the same branch, the same numbers with a head off, and a
    two-token text refused in the service's sentence."""
    from explorer.service import RemoteModel
    from test_service import service_in_this_process

    def load(service):
        service.lm = lm
        service.status.model = lm.info().to_dict()
        service.status.state = "ready"

    with service_in_this_process(load) as (address, _):
        remote = RemoteModel(address)
        try:
            view = ExplorerView(trace, lm=remote)
            view.selection.step = 2
            index, candidate = runner_up(trace.steps[2])
            stepper_of(view).candidates.selected = index
            assert view.whatif.wait(60), view.whatif.status.value
            same_trace(view.trace, lm.branch(trace, 2, candidate, progress=False))
            view.whatif.switch_off(1, 1)
            assert view.whatif.wait(60)
            expected = whatif.rescore(lm, view.trace, 2, [(1, 1)])
            assert view.whatif.after.prob == pytest.approx(expected.prob, rel=1e-5)
            stepper_of(view).branch_token.value = "ab"
            stepper_of(view).branch_button.click()
            assert view.whatif.wait(60)
            assert "not one" in view.whatif.status.value and len(view.family) == 2
        finally:
            remote.close()
