"""compare: aligning two traces (by position, by the longest common token runs, by text), the attention difference
over matched positions against numpy computed independently, step pairs, the tokenizer rule, and the view's data.

Prompts that differ by one word are the issue's test: with the byte tokenizer of the tiny models (one token a byte)
and with the real default model's tokenizer.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import explorer
from conftest import make_tiny_lm, run_without_torch
from explorer.alignment import align, counterpart, difference, shared_tokenizer, step_pairs, text_pairs, token_runs
from explorer.facts import ModelFacts

CAT, DOG = "The cat sat on the mat", "The dog sat on the mat"


class PairTokenizer:
    """A second tokenizer for tiny models: two bytes a token (a last odd byte alone), spelled as the byte tokenizer
    spells them, so the texts agree while the ids and the token boundaries do not."""

    chat_template = None
    pad_token_id = 0
    eos_token_id = 0
    vocab_size = 2 + 94 + 94 * 94

    def __call__(self, text, add_special_tokens=True):
        data = [b % 94 for b in text.encode()]
        ids = [96 + x * 94 + y for x, y in zip(data[0::2], data[1::2])]
        return {"input_ids": [1] * bool(add_special_tokens) + ids + ([2 + data[-1]] if len(data) % 2 else [])}

    def piece(self, i: int) -> str:
        if i < 2:
            return ["<eos>", "<bos>"][i]
        if i < 96:
            return chr(32 + i - 2)
        return chr(32 + (i - 96) // 94) + chr(32 + (i - 96) % 94)

    def decode(self, ids):
        return "".join(self.piece(i) for i in ids)

    def convert_ids_to_tokens(self, ids):
        return [self.piece(i) for i in ids]


def make_pair_lm(seed: int = 0):
    """A tiny GPT-2 of another shape (3 layers × 2 heads) with the two-bytes-a-token vocabulary."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    config = tf.GPT2Config(n_embd=32, n_layer=3, n_head=2, n_positions=128, vocab_size=PairTokenizer.vocab_size,
                           bos_token_id=1, eos_token_id=0)
    model = tf.AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = None
    return explorer.wrap(model, PairTokenizer(), name="tiny-gpt2-pairs")


@pytest.fixture(scope="module")
def lm():
    return make_tiny_lm("llama")


@pytest.fixture(scope="module")
def cat_dog(lm):
    """Two traces of prompts that differ by one word, B sampled so that some of its choices differ from A's."""
    a = lm.generate(CAT, max_new_tokens=8, progress=False)
    b = lm.generate(DOG, max_new_tokens=8, temperature=1.0, seed=1, progress=False)
    return a, b


def test_one_changed_word_is_left_out_and_every_unchanged_byte_run_matched(cat_dog):
    a, b = cat_dog
    al = align(a, b)
    assert al.method == "token runs" and "longest common runs" in al.sentence
    changed = [1 + CAT.index("cat") + k for k in range(3)]  # after <bos>, one token a byte
    assert [a.tokens[i] for i in changed] != [b.tokens[i] for i in changed]
    unchanged = [i for i in range(a.n_prompt) if i not in changed]
    assert all((i, i) in al.pairs for i in unchanged)  # "<bos>The " and " sat on the mat", position for position
    assert not set(changed) & set(al.matched_a) and not set(changed) & set(al.matched_b)
    assert all(a.token_ids[i] == b.token_ids[j] for i, j in al.pairs)
    assert al.matched_a == sorted(set(al.matched_a)) and al.matched_b == sorted(set(al.matched_b))
    assert al.unmatched_a[:3] == changed and al.unmatched_b[:3] == changed


def test_a_lone_token_is_paired_only_where_it_keeps_the_runs_in_step():
    # "the" (9) recurs two tokens apart in A and one in B after the common run: not paired; a lone first token is
    assert token_runs([1, 2, 3, 4, 7, 9, 10], [1, 2, 3, 5, 9, 11]) == [(0, 0, 3)]
    assert token_runs([7, 1, 2], [7, 3, 2]) == [(0, 0, 1), (2, 2, 1)]
    assert token_runs([5, 6, 1, 2], [5, 6, 3, 3, 1, 2]) == [(0, 0, 2), (2, 4, 2)]


def test_a_word_of_another_length_shifts_the_pairs(lm):
    a = lm.trace("The cat sat on the mat", progress=False)
    b = lm.trace("The kitten sat on the mat", progress=False)
    al = align(a, b)
    assert al.method == "token runs"
    shift = len("kitten") - len("cat")
    tail = 1 + CAT.index(" sat")
    assert [(i, i + shift) for i in range(tail, a.n_tokens)] == [p for p in al.pairs if p[0] >= tail]
    assert len(al.unmatched_b) - len(al.unmatched_a) == shift


def test_same_prompt_aligns_position_by_position(lm):
    a = lm.generate(CAT, max_new_tokens=8, progress=False)
    b = lm.generate(CAT, max_new_tokens=8, temperature=1.5, seed=2, progress=False)
    al = align(a, b)
    assert a.n_tokens == b.n_tokens
    assert al.method == "position" and al.pairs == [(i, i) for i in range(a.n_tokens)]
    assert "position by position" in al.sentence
    pairs = step_pairs(a, b, al)
    assert [p.differs for p in pairs] == [sa.token_id != sb.token_id for sa, sb in zip(a.steps, b.steps)]
    assert any(p.differs for p in pairs) and [p.a for p in pairs] == a.steps and [p.b for p in pairs] == b.steps


def test_the_view_says_when_one_trace_is_a_branch_of_the_other(lm):
    a = lm.generate(CAT, max_new_tokens=6, progress=False)
    b = lm.branch(a, step=2, token=a.steps[2].top_k[1], progress=False)
    view = explorer.compare(a, b)
    assert view.method == "position" and view.sentence.endswith("B is a branch of A at step 2.")
    assert [s["differs"] for s in view.steps][:3] == [False, False, True]


def test_same_prompt_of_another_length_pairs_the_common_positions(lm):
    a = lm.generate(CAT, max_new_tokens=4, progress=False)
    b = lm.generate(CAT, max_new_tokens=7, progress=False)
    al = align(a, b)
    assert al.method == "position" and al.pairs == [(i, i) for i in range(a.n_tokens)]
    assert "the last 3 positions of B have no counterpart" in al.sentence
    pairs = step_pairs(a, b, al)
    assert len(pairs) == 7 and [p.a is None for p in pairs] == [False] * 4 + [True] * 3
    assert not any(p.differs for p in pairs)  # greedy from one prompt: the same choices; a missing step is no choice


def test_different_vocabularies_align_by_text():
    a = make_tiny_lm("llama").generate(CAT, max_new_tokens=6, progress=False)
    b = make_pair_lm().generate(CAT, max_new_tokens=6, progress=False)
    assert a.model.vocab_size != b.model.vocab_size
    al = align(a, b)
    assert al.method == "text" and not al.tokenizers.same
    assert al.sentence.startswith("By text only: different tokenizers (vocabularies of 96 and 8932 tokens)")
    # each two-byte token of B's prompt is paired with one of its two bytes in A: the first, as ties go first
    prompt_pairs = [(i, j) for i, j in al.pairs if j < b.n_prompt]
    assert prompt_pairs == [(0, 0)] + [(2 * j - 1, j) for j in range(1, b.n_prompt)]
    assert all(a.tokens[i] in b.tokens[j] for i, j in prompt_pairs)
    # the models differ in shape: the mean of the heads at the same relative depth
    heads = counterpart(a, b, 1, 2)
    assert (heads.layer_a, heads.head_a, heads.layer_b, heads.head_b) == (1, None, 2, None)
    assert "same relative depth" in heads.note
    d = difference(a, b, al, 1, 2)
    ia, jb = np.array(al.matched_a), np.array(al.matched_b)
    np.testing.assert_allclose(d.b, b.attention(2)[np.ix_(jb, jb)], atol=1e-6)
    np.testing.assert_allclose(d.a, a.attention(1)[np.ix_(ia, ia)], atol=1e-6)


def test_text_pairs_are_mutual_best_overlaps_in_order():
    assert text_pairs(["The", " cat", " sat"], ["The", " ", "cat", " sat"]) == [(0, 0), (1, 2), (2, 3)]
    assert text_pairs(["The", " cat", " sat"], ["The", " c", "at", " sat"]) == [(0, 0), (1, 1), (2, 3)]  # a tie: first
    assert text_pairs(["a", "b"], ["x", "y"]) == []
    assert text_pairs(["<bos>", "Hi"], ["Hi"]) == [(1, 0)]


@pytest.mark.parametrize("layer, head", [(0, 0), (1, 3), (1, None)])
def test_difference_is_numpy_over_the_matched_rows_and_columns(cat_dog, layer, head):
    a, b = cat_dog
    al = align(a, b)
    rows_a = [i for i, _ in al.pairs]
    rows_b = [j for _, j in al.pairs]
    want_a = a.attention(layer, head)[rows_a][:, rows_a]
    want_b = b.attention(layer, head)[rows_b][:, rows_b]
    got = difference(a, b, al, layer, head)
    np.testing.assert_allclose(got.a, want_a, atol=1e-6)
    np.testing.assert_allclose(got.b, want_b, atol=1e-6)
    np.testing.assert_allclose(got.delta, want_a - want_b, atol=1e-6)
    assert got.delta.shape == (len(al.pairs),) * 2 and np.abs(got.delta).max() > 0


def with_model(trace, **facts):
    return dataclasses.replace(trace, model=ModelFacts(**facts))


def test_the_tokenizer_rule(cat_dog):
    a, b = cat_dog
    assert shared_tokenizer(a, b) == (True, "the same model, tiny-llama")
    other = with_model(b, name="another", vocab_size=96)
    assert shared_tokenizer(a, other).same and "one vocabulary" in shared_tokenizer(a, other).why
    assert not shared_tokenizer(a, with_model(b, name="another")).same  # no vocabulary size: no evidence
    assert "vocabularies of 96 and 97" in shared_tokenizer(a, with_model(b, name="tiny-llama", vocab_size=97)).why
    respelled = dataclasses.replace(b, pieces=["X" + p for p in b.pieces])
    verdict = shared_tokenizer(a, respelled)
    assert not verdict.same and f"token id {a.token_ids[0]} is" in verdict.why
    assert align(a, respelled).method == "text"


def test_compare_view_sends_the_window_of_a_b_and_their_difference(cat_dog):
    a, b = cat_dog
    view = explorer.compare(a, b, layer=1, head=2, window_size=8)
    al = align(a, b)
    full = difference(a, b, al, 1, 2)
    assert view.method == "token runs" and view.sentence.startswith(al.sentence)
    assert view.pos_a == al.matched_a and view.pos_b == al.matched_b and view.shows == "1 2"
    view.window_start, view.key_start = 5, 2
    block = np.frombuffer(view.window, "<f4").reshape(3, 8, 8)
    assert view.window_at == [5, 2, 8, 8]
    np.testing.assert_array_equal(block[0], full.a[5:13, 2:10])
    np.testing.assert_array_equal(block[2], full.delta[5:13, 2:10])
    assert view.dscale == pytest.approx(float(np.abs(full.delta).max()))
    view.window_start = 10_000  # clamped to the last full window
    assert view.window_at[0] == len(al.pairs) - 8
    assert [s["differs"] for s in view.steps] == [p.differs for p in step_pairs(a, b, al)]
    assert any(s["differs"] for s in view.steps)


def test_compare_view_of_models_of_other_shapes_averages_heads():
    a = make_tiny_lm("llama").generate(CAT, max_new_tokens=4, progress=False)
    b = make_pair_lm().generate(DOG, max_new_tokens=4, progress=False)
    view = explorer.compare(a, b, layer=1, head=3)
    assert view.method == "text" and view.sentence.startswith("By text only: different tokenizers")
    assert not view.heads_apply and view.head is None and "same relative depth" in view.note
    view.head = 2
    assert view.head is None


def test_explorer_compare_opens_the_view_without_torch(cat_dog, tmp_path):
    a, b = cat_dog
    import explorer.alignment  # noqa: F401  (a submodule of another name: explorer.compare stays the function)

    assert explorer.compare(a, b).method == "token runs"
    run_without_torch(a, tmp_path, "v = explorer.compare(trace, trace)\nassert v.method == 'position', v.method\n"
                                   "from explorer.alignment import align\nassert callable(explorer.compare)")


def test_one_changed_word_with_the_default_model(default_lm):
    a = default_lm.trace("The cat sat on the mat and looked at the door.", progress=False)
    b = default_lm.trace("The dog sat on the mat and looked at the door.", progress=False)
    al = align(a, b)
    assert al.method == "token runs"
    assert all(a.token_ids[i] == b.token_ids[j] for i, j in al.pairs)
    assert [a.tokens[i] for i in al.unmatched_a] == [" cat"] and [b.tokens[j] for j in al.unmatched_b] == [" dog"]
    ga = default_lm.generate("The cat sat on the mat. Then it", max_new_tokens=6, progress=False)
    gb = default_lm.generate("The dog sat on the mat. Then it", max_new_tokens=6, progress=False)
    al = align(ga, gb)
    assert al.method == "token runs" and all(ga.token_ids[i] == gb.token_ids[j] for i, j in al.pairs)
    assert len([i for i in al.unmatched_a if i < ga.n_prompt]) <= 2
    assert len(al.unmatched_a) + len(al.unmatched_b) <= 2 + 2 * 6  # the word, and at most every generated token
    d = difference(ga, gb, al, 10, None)
    assert d.delta.shape == (len(al.pairs),) * 2
