"""The head atlas: its table against trace.head_scores(), its queries against numpy masks and sorts against
sorted(), malformed queries refused, a click opening the head in the explorer's Heatmap tab, the score
computation in its thread (progress, closing, failure), and an atlas over many texts (means with their spread)."""

from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np
import pytest

import explorer
from conftest import make_tiny_lm, run_without_torch
from explorer import HeadAtlasOverTexts, analysis
from explorer.trace import WeightsLayer
from explorer.views import Selection
from explorer.views.explorer_view import ExplorerView
from explorer.views.meaning.head_atlas import COLUMNS, QueryError, head_atlas, parse_query
from synthetic import synthetic_trace, with_analysis

SCORES = analysis.SCORES


@pytest.fixture(scope="module")
def trace():
    """6 layers × 4 heads over 150 tokens that repeat every 17, so every score has rows."""
    t = synthetic_trace(150, n_layers=6, n_heads=4, kv_heads=2, sink=3.0, seed=5)
    return dataclasses.replace(t, token_ids=[i % 17 for i in range(150)])


@pytest.fixture(scope="module")
def scores(trace):
    return trace.head_scores()


@pytest.fixture()
def atlas(trace):
    return head_atlas(trace, in_background=False)


def shown_heads(atlas) -> list[tuple[int, int]]:
    return [tuple(atlas.table[i][:2]) for i in atlas.shown]


def heads_where(mask: np.ndarray) -> set[tuple[int, int]]:
    return {(int(layer), int(head)) for layer, head in np.argwhere(mask)}


def test_the_table_is_trace_head_scores(atlas, trace, scores):
    assert atlas.ready and atlas.progress == trace.n_layers and atlas.failure == ""
    assert len(atlas.table) == trace.n_layers * trace.n_heads
    assert {tuple(r[:2]) for r in atlas.table} == {(l, h) for l in range(trace.n_layers) for h in range(trace.n_heads)}
    for layer, head, *values in atlas.table:
        for name, value in zip(SCORES, values):
            assert value == pytest.approx(float(scores[name][layer, head]), abs=1e-6), (name, layer, head)
    assert atlas.shown == list(range(len(atlas.table)))  # no query: every head, layer by layer


def test_queries_keep_the_heads_a_numpy_mask_keeps(atlas, trace, scores):
    layer, head = np.indices(scores["self"].shape)
    q = {name: float(np.quantile(a, 0.6)) for name, a in scores.items()}  # thresholds that split the heads
    low = float(np.quantile(scores["self"], 0.2))
    cases = {
        f"first_token > {q['first_token']}": scores["first_token"] > q["first_token"],
        f"induction >= {q['induction']} and layer < 4": (scores["induction"] >= q["induction"]) & (layer < 4),
        f"previous_token > {q['previous_token']} or self > {q['self']}":
            (scores["previous_token"] > q["previous_token"]) | (scores["self"] > q["self"]),
        f"not (entropy < {q['entropy']}) AND head != 2": ~(scores["entropy"] < q["entropy"]) & (head != 2),
        f"{q['duplicate_token']} <= duplicate_token": scores["duplicate_token"] >= q["duplicate_token"],
        f"{low} < self <= {q['self']}": (scores["self"] > low) & (scores["self"] <= q["self"]),
        "layer = 2 or layer == 5 and head < 2": (layer == 2) | ((layer == 5) & (head < 2)),  # and before or
        "(layer = 2 or layer == 5) and head < 2": ((layer == 2) | (layer == 5)) & (head < 2),
        "layer > 99": np.zeros_like(layer, dtype=bool),
        "": np.ones_like(layer, dtype=bool),
        "   ": np.ones_like(layer, dtype=bool),
    }
    for query, mask in cases.items():
        atlas.query = query
        assert atlas.error == "", query
        assert set(shown_heads(atlas)) == heads_where(mask), query
        assert len(atlas.shown) == int(mask.sum())
        assert 0 < mask.sum() < mask.size or query in ("layer > 99", "", "   ")


def test_columns_sort_both_ways_with_missing_scores_last(atlas, trace, scores):
    atlas.query = "layer >= 1"
    everything = [(l, h) for l in range(1, trace.n_layers) for h in range(trace.n_heads)]
    for name in COLUMNS:
        for descending in (False, True):
            atlas.sort_by, atlas.descending = name, descending

            def key(lh, name=name, descending=descending):
                v = float(lh[0] if name == "layer" else lh[1] if name == "head" else scores[name][lh])
                return (math.isnan(v), -v if descending else v, lh)

            assert shown_heads(atlas) == sorted(everything, key=key), (name, descending)


def test_malformed_queries_are_refused_and_keep_the_last_table(atlas):
    atlas.query = "layer < 2"
    kept = list(atlas.shown)
    refused = {
        "induction >": "ends too early",
        "foo > 1": "unknown column 'foo'",
        "first > 0.5": "did you mean first_token",
        "(layer > 1": "not closed",
        "layer > 1 )": "unexpected ')'",
        "induction": "not a condition",
        "layer > 1 2": "unexpected '2'",
        "layer > 1 and": "ends too early",
        "or layer > 1": "expected a column or a number",
        "__import__('os').system('true') > 1": "unexpected",  # read as tokens, never run
        "layer $ 3": "unexpected '$'",
        "layer > 1; head < 2": "unexpected ';'",
    }
    for query, why in refused.items():
        atlas.query = query
        assert why in atlas.error, (query, atlas.error)
        assert atlas.shown == kept, query
        with pytest.raises(QueryError):
            parse_query(query)
    atlas.query = "head = 0"
    assert atlas.error == "" and {h for _, h in shown_heads(atlas)} == {0}


def test_a_missing_score_fails_every_comparison():
    trace = synthetic_trace(40, n_layers=2, n_heads=2)  # every token differs: no duplicate-token or induction rows
    atlas = head_atlas(trace, in_background=False)
    assert all(r[2 + SCORES.index("induction")] is None for r in atlas.table)
    atlas.query = "induction >= 0"
    assert atlas.shown == []
    atlas.query = "not induction >= 0"
    assert len(atlas.shown) == 4


def test_a_click_opens_the_head_in_the_heatmap_tab(trace):
    explorer = ExplorerView(trace)
    titles = [t for t, _ in explorer.builders]
    assert titles.index("Head atlas") == titles.index("All heads") + 1
    explorer.show_tab("Head atlas")
    atlas = explorer.tabs.children[titles.index("Head atlas")].children[0]
    atlas.wait(30)
    assert atlas.ready and explorer.message.value == ""
    atlas._on_msg(atlas, {"kind": "open", "layer": 4, "head": 3}, [])  # what a click on a row sends
    assert explorer.tabs.selected_index == titles.index("Heatmap")
    assert (explorer.selection.layer, explorer.selection.head) == (4, 3)
    heatmap = explorer.tabs.children[titles.index("Heatmap")].children[0]
    assert heatmap.shows == "4 3"
    assert np.allclose(np.frombuffer(heatmap.window_exact, "<f4").reshape(heatmap.window_rows, -1),
                       trace.attention(4, 3)[:64, :64], atol=1e-6)
    assert (atlas.layer, atlas.head) == (4, 3)  # the highlight follows the selection
    heatmap.head = 1  # changed elsewhere: the atlas follows
    assert (atlas.layer, atlas.head) == (4, 1)
    explorer.show_tab("Head atlas")  # the same head again: opened again (a message, not a trait that stays put)
    atlas._on_msg(atlas, {"kind": "open", "layer": 4, "head": 1}, [])
    assert explorer.tabs.selected_index == titles.index("Heatmap")
    atlas._on_msg(atlas, {"kind": "open", "layer": 99, "head": 0}, [])  # out of range: ignored
    atlas._on_msg(atlas, {"kind": "open", "layer": "x"}, [])
    assert (explorer.selection.layer, explorer.selection.head) == (4, 1)


def test_a_click_opens_the_head_when_the_stepper_has_head_pickers():
    trace = with_analysis(synthetic_trace(60, n_layers=4, n_heads=4), n_generated=5)  # generated: a stepper
    explorer = ExplorerView(trace)
    explorer.show_tab("Head atlas")
    atlas = explorer.tabs.children[[t for t, _ in explorer.builders].index("Head atlas")].children[0]
    atlas.wait(30)
    atlas._on_msg(atlas, {"kind": "open", "layer": 3, "head": 2}, [])
    assert (explorer.selection.layer, explorer.selection.head) == (3, 2)


def test_a_weights_layer_trace_works_the_same():
    trace = make_tiny_lm("gpt_neo").trace("abcdabcdxyzabcd")  # GPT-Neo: hooks, attention kept as weights
    assert isinstance(trace.layers[0], WeightsLayer)
    scores = trace.head_scores()
    sel, opened = Selection(), []
    atlas = head_atlas(trace, sel, on_open=lambda layer, head: opened.append((layer, head)), in_background=False)
    for layer, head, *values in atlas.table:
        assert values == pytest.approx([float(scores[n][layer, head]) for n in SCORES], abs=1e-6)
    threshold = float(np.median(scores["previous_token"]))
    atlas.query = f"previous_token > {threshold}"
    assert set(shown_heads(atlas)) == heads_where(scores["previous_token"] > threshold)
    atlas._on_msg(atlas, {"kind": "open", "layer": 1, "head": 2}, [])
    assert opened == [(1, 2)] and (sel.layer, sel.head) == (1, 2)


class GatedLayer:
    """A trace layer whose rows wait for `gate`: the scores' thread can be held still while a test acts."""

    def __init__(self, layer, gate: threading.Event, fail: bool = False):
        self.layer, self.gate, self.fail = layer, gate, fail

    @property
    def n_heads(self) -> int:
        return self.layer.n_heads

    def heads_rows(self, start: int, stop: int) -> np.ndarray:
        assert self.gate.wait(30)
        if self.fail:
            raise RuntimeError("rows went missing")
        return self.layer.heads_rows(start, stop)


def gated(trace, gate, fail=False):
    return dataclasses.replace(trace, layers=[GatedLayer(layer, gate, fail) for layer in trace.layers])


def test_scores_are_computed_in_a_thread_with_progress(trace, scores):
    gate = threading.Event()
    atlas = head_atlas(gated(trace, gate))
    progress = []
    atlas.observe(lambda c: progress.append(c["new"]), "progress")
    assert not atlas.ready and atlas.table == [] and atlas.progress == 0
    atlas.query = "foo > 1"  # read at once, before the scores are there
    assert "unknown column" in atlas.error
    atlas.query = "layer >= 3 and head < 2"
    assert atlas.error == ""
    gate.set()
    atlas.wait(30)
    assert atlas.ready and progress == list(range(1, trace.n_layers + 1))
    assert set(shown_heads(atlas)) == {(l, h) for l in range(3, trace.n_layers) for h in range(2)}
    assert atlas.scores["induction"] == pytest.approx(scores["induction"])  # kept on the view


def test_closing_stops_the_thread_and_a_failure_is_shown(trace):
    gate = threading.Event()
    atlas = head_atlas(gated(trace, gate))
    atlas.close()  # the trace changed, say, while the first layer was being computed
    gate.set()
    atlas.wait(30)
    assert not atlas._worker.is_alive() and not atlas.ready and atlas.progress == 0 and atlas.scores is None
    broken = head_atlas(gated(trace, gate, fail=True), in_background=False)
    assert "rows went missing" in broken.failure and not broken.ready


def test_the_atlas_imports_no_torch(tiny_trace, tmp_path):
    run_without_torch(tiny_trace, tmp_path, (
        "from explorer.views import head_atlas\n"
        "a = head_atlas(trace, in_background=False); a.query = 'layer < 1 and head >= 2'\n"
        "assert a.ready and len(a.shown) == trace.n_heads - 2, a.shown"
    ))


def atlas_over_texts(n_layers: int = 5, n_heads: int = 3, n_texts: int = 12, seed: int = 2) -> HeadAtlasOverTexts:
    """Scores over texts made up: every score but two has all texts; induction 9 of them; duplicate_token none."""
    rng = np.random.default_rng(seed)
    shape = (n_layers, n_heads)
    mean = {name: rng.random(shape).astype(np.float32) for name in SCORES}
    std = {name: (0.2 * rng.random(shape)).astype(np.float32) for name in SCORES}
    n = {name: np.full(shape, n_texts) for name in SCORES}
    n["induction"][:] = 9
    mean["duplicate_token"][:], std["duplicate_token"][:], n["duplicate_token"][:] = np.nan, np.nan, 0
    return HeadAtlasOverTexts(mean=mean, std=std, n=n, n_texts=n_texts, n_layers=n_layers, n_heads=n_heads,
                              n_tokens=[101] * n_texts, model="made-up", source="12 made-up texts")


def test_an_atlas_over_texts_shows_each_mean_with_its_spread():
    over = atlas_over_texts()
    sel, opened = Selection(), []
    atlas = head_atlas(over, sel, on_open=lambda layer, head: opened.append((layer, head)))
    assert atlas.ready and atlas._worker is None and atlas.failure == ""  # nothing to compute
    assert (atlas.n_texts, atlas.source, atlas.n_tokens) == (12, "12 made-up texts", 12 * 101)
    assert atlas.trace is None and atlas.over_texts is over and atlas.scores is over.mean
    assert len(atlas.table) == len(atlas.spread) == len(atlas.counts) == 15
    for (layer, head, *means), stds, counts in zip(atlas.table, atlas.spread, atlas.counts):
        for i, name in enumerate(SCORES):
            if name == "duplicate_token":
                assert means[i] is None and stds[i] is None and counts[i] == 0
                continue
            assert means[i] == pytest.approx(float(over.mean[name][layer, head]), abs=1e-6)
            assert stds[i] == pytest.approx(float(over.std[name][layer, head]), abs=1e-6)
            assert counts[i] == (9 if name == "induction" else 12)
    threshold = float(np.median(over.mean["induction"]))  # queries and sorting read the means
    atlas.query = f"induction > {threshold} and layer >= 1"
    layer, _ = np.indices(over.mean["induction"].shape)
    assert set(shown_heads(atlas)) == heads_where((over.mean["induction"] > threshold) & (layer >= 1))
    atlas.query, atlas.sort_by, atlas.descending = "", "previous_token", True
    order = sorted(((l, h) for l in range(5) for h in range(3)), key=lambda lh: -over.mean["previous_token"][lh])
    assert shown_heads(atlas) == order
    atlas._on_msg(atlas, {"kind": "open", "layer": 4, "head": 2}, [])  # a click selects the head
    assert opened == [(4, 2)] and (sel.layer, sel.head) == (4, 2)
    atlas._on_msg(atlas, {"kind": "open", "layer": 5, "head": 0}, [])  # no such layer: ignored
    assert opened == [(4, 2)]
    assert "over 12 texts" in repr(atlas)


def test_a_single_trace_atlas_has_no_spread(atlas):
    assert atlas.n_texts == 0 and atlas.source == "" and atlas.spread == [] and atlas.counts == []
    assert atlas.over_texts is None


def test_an_atlas_over_texts_of_a_model_is_shown_as_computed():
    lm = make_tiny_lm("llama")
    over = explorer.head_atlas(lm, explorer.repeated_random_tokens(lm, n=4, length=10), progress=False)
    atlas = head_atlas(over, in_background=False)
    assert atlas.n_texts == 4 and atlas.source == ""
    for (layer, head, *means), stds in zip(atlas.table, atlas.spread):
        assert means == pytest.approx([float(over.mean[n][layer, head]) for n in SCORES], abs=1e-6)
        assert stds == pytest.approx([float(over.std[n][layer, head]) for n in SCORES], abs=1e-6)


def test_an_atlas_over_texts_needs_no_torch(tiny_trace, tmp_path):
    run_without_torch(tiny_trace, tmp_path, (
        "import numpy as np\nfrom explorer import HeadAtlasOverTexts, analysis\nfrom explorer.views import head_atlas\n"
        "m = {n: np.full((2, 3), 0.5, np.float32) for n in analysis.SCORES}\n"
        "c = {n: np.full((2, 3), 4) for n in analysis.SCORES}\n"
        "over = HeadAtlasOverTexts(m, m, c, 4, 2, 3, [9] * 4, 'x', '')\n"
        "a = head_atlas(over); a.query = 'layer = 1'\n"
        "assert a.ready and a.n_texts == 4 and len(a.shown) == 3, a.shown"
    ))
