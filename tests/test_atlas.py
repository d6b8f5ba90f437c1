"""Head scores over many texts (explorer.head_atlas): the mean, standard deviation and count of each text's own
head scores, computed here text by text; the built-in random tokens read twice; token ids read as they are
(lm.trace_ids); bad input refused with a sentence; and on SmolLM2, the built-in set finds its induction heads."""

from __future__ import annotations

import time

import numpy as np
import pytest

import explorer
from conftest import make_tiny_lm
from explorer import analysis
from explorer.atlas import HeadAtlasOverTexts, head_atlas, repeated_random_tokens
from explorer.errors import SettingsError
from test_analysis import scores_by_definition
from test_capture import eager_attentions

TEXTS = ["abcdabcdxyz", "hello, hello world", "abcdefg", "the cat sat on the mat, the cat"]


def reference(per_text: list[dict[str, np.ndarray]]) -> tuple[dict, dict, dict]:
    """Mean, standard deviation (ddof=0) and count over the texts that have each score, head by head, by loops."""
    n_layers, n_heads = per_text[0]["self"].shape
    mean, std, count = {}, {}, {}
    for name in analysis.SCORES:
        mean[name], std[name] = np.full((n_layers, n_heads), np.nan), np.full((n_layers, n_heads), np.nan)
        count[name] = np.zeros((n_layers, n_heads), dtype=int)
        for layer in range(n_layers):
            for head in range(n_heads):
                values = [float(s[name][layer, head]) for s in per_text if not np.isnan(s[name][layer, head])]
                count[name][layer, head] = len(values)
                if values:
                    m = sum(values) / len(values)
                    mean[name][layer, head] = m
                    std[name][layer, head] = (sum((v - m) ** 2 for v in values) / len(values)) ** 0.5
    return mean, std, count


def assert_matches(atlas: HeadAtlasOverTexts, per_text: list[dict[str, np.ndarray]], atol: float = 1e-6) -> None:
    mean, std, count = reference(per_text)
    assert atlas.n_texts == len(per_text)
    for name in analysis.SCORES:
        assert atlas.mean[name].shape == atlas.std[name].shape == atlas.n[name].shape == (atlas.n_layers,
                                                                                          atlas.n_heads)
        np.testing.assert_allclose(atlas.mean[name], mean[name], atol=atol, err_msg=name)
        np.testing.assert_allclose(atlas.std[name], std[name], atol=atol, err_msg=name)
        np.testing.assert_array_equal(atlas.n[name], count[name], err_msg=name)


@pytest.mark.parametrize("arch", ["llama", "gpt_neo"])
def test_the_atlas_is_the_mean_and_spread_of_each_texts_own_scores(arch):
    lm = make_tiny_lm(arch)
    per_text = [analysis.head_scores(lm.trace(text)) for text in TEXTS]
    assert np.isnan(per_text[2]["induction"]).all()  # "abcdefg": no induction row, so 3 of 4 texts count
    for batch_size in (1, 3, 16):  # how the texts are grouped changes nothing
        atlas = head_atlas(lm, TEXTS, batch_size=batch_size, progress=False)
        assert_matches(atlas, per_text)
        assert atlas.n["induction"].max() == 3 and atlas.n["self"].min() == 4
    assert atlas.n_tokens == [lm.trace(t).n_tokens for t in TEXTS]
    assert (atlas.n_layers, atlas.n_heads, atlas.model) == (2, 4, f"tiny-{arch}")


def test_the_scores_follow_their_definition_from_eager_attention():
    """One step further from the code under test: each text's scores from transformers' eager weights by loops."""
    lm = make_tiny_lm("llama")
    ids = repeated_random_tokens(lm, n=3, length=9, seed=4)
    per_text = [scores_by_definition(eager_attentions(lm.model, seq), seq) for seq in ids]
    assert_matches(head_atlas(lm, ids, batch_size=2, progress=False), per_text, atol=2e-5)


def test_token_ids_are_read_as_they_are():
    lm = make_tiny_lm("llama")
    text = "abcdabcdxyz"
    ids = lm.encode(text)
    by_ids, by_text = lm.trace_ids(ids, progress=False), lm.trace(text, progress=False)
    assert by_ids.token_ids == by_text.token_ids == ids
    for layer in range(by_ids.n_layers):
        np.testing.assert_array_equal(by_ids.layers[layer].heads_rows(0, len(ids)),
                                      by_text.layers[layer].heads_rows(0, len(ids)))
    np.testing.assert_array_equal(by_ids.surprisal, by_text.surprisal)
    no_bos = ids[1:]  # nothing is put before token ids
    assert lm.trace_ids(no_bos, progress=False).token_ids == no_bos
    mixed = head_atlas(lm, [text, np.array(ids[1:])], progress=False)  # strings and id lists (numpy ints too)
    assert_matches(mixed, [analysis.head_scores(by_text), analysis.head_scores(lm.trace_ids(no_bos))])
    with pytest.raises(SettingsError, match="token ids 0..95"):
        lm.trace_ids([5, 96])


def fast_tokenizer():
    """A real Hugging Face tokenizer: BOS before a text, 40 words, and an added special token that
    all_special_ids does not list (as SmolLM2's <repo_name> and friends)."""
    import transformers as tf
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(40)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.add_tokens([AddedToken("<repo_name>", special=True)])
    assert 43 not in fast.all_special_ids and len(fast) == 44
    return fast


def test_random_tokens_are_repeated_twice_without_special_tokens_and_reproducible():
    lm = make_tiny_lm("llama")  # ByteTokenizer: 0 is end of text and padding, 1 the BOS it puts before a text
    sets = repeated_random_tokens(lm, n=20, length=30, seed=7)
    assert len(sets) == 20
    for seq in sets:
        assert len(seq) == 1 + 2 * 30 and seq[0] == 1
        first, second = seq[1:31], seq[31:]
        assert first == second
        assert len(set(first)) == 30  # distinct: each token of the second copy occurs once before
        assert all(type(t) is int and 2 <= t < 96 for t in first)
    assert repeated_random_tokens(lm, n=20, length=30, seed=7) == sets
    assert repeated_random_tokens(lm, n=20, length=30, seed=8) != sets
    assert len({tuple(s) for s in sets}) == 20
    tokenizer = fast_tokenizer()  # a tokenizer alone: its vocabulary, without any special token
    for seq in repeated_random_tokens(tokenizer, n=5, length=40, seed=0):
        assert seq[0] == 0 and seq[1:41] == seq[41:] and sorted(seq[1:41]) == list(range(3, 43))
    with pytest.raises(SettingsError, match="more than the 40 ordinary tokens"):
        repeated_random_tokens(tokenizer, length=41)


def test_the_built_in_set_is_the_default_and_finds_the_copy():
    lm = make_tiny_lm("llama")
    atlas = head_atlas(lm, progress=False)
    assert atlas.n_texts == 32 and atlas.n_tokens == [101] * 32
    assert atlas.source == "32 sequences of 50 random tokens, each read twice (seed 0)"
    built_in = repeated_random_tokens(lm, n=32, length=50, seed=0)
    assert_matches(atlas, [analysis.head_scores(lm.trace_ids(seq, progress=False)) for seq in built_in])
    assert (atlas.n["induction"] == 32).all()  # every sequence has a second copy
    layer, head, mean, std = atlas.top("induction", 1)[0]
    assert mean == pytest.approx(float(np.nanmax(atlas.mean["induction"])))
    assert std == pytest.approx(float(atlas.std["induction"][layer, head]))
    assert "over 32 texts" in repr(atlas)


@pytest.mark.parametrize("texts, why", [
    ([], "texts is empty"),
    ("one text", "not one string"),
    (["fine", 3], r"texts\[1\] is a int \(3\)"),
    (["fine", None], r"texts\[1\] is a NoneType"),
    ([["a", "b"]], "a list that holds something other than whole numbers"),
    ([[]], r"texts\[0\] is an empty list"),
    (["fine", ""], r"texts\[1\] is an empty string"),
    ([[1, True]], "something other than whole numbers"),
    (42, "not int"),
])
def test_bad_texts_are_refused_with_a_sentence(texts, why):
    lm = make_tiny_lm("llama")
    with pytest.raises(SettingsError, match=why):
        head_atlas(lm, texts, progress=False)


@pytest.mark.parametrize("batch_size", [0, -2, 1.5, True, "8"])
def test_a_bad_batch_size_is_refused(batch_size):
    with pytest.raises(SettingsError, match="batch_size must be a whole number ≥ 1"):
        head_atlas(make_tiny_lm("llama"), ["abc"], batch_size=batch_size, progress=False)


def test_bad_random_token_settings_are_refused():
    lm = make_tiny_lm("llama")
    for kwargs in ({"n": 0}, {"length": 0}, {"n": 2.0}, {"length": True}):
        with pytest.raises(SettingsError, match="whole number ≥ 1"):
            repeated_random_tokens(lm, **kwargs)
    with pytest.raises(SettingsError, match="unknown score 'inductoin'"):
        head_atlas(lm, ["abab"], progress=False).top("inductoin")


def test_the_names_are_public():
    assert explorer.head_atlas is head_atlas and explorer.repeated_random_tokens is repeated_random_tokens
    assert explorer.HeadAtlasOverTexts is HeadAtlasOverTexts
    assert {"head_atlas", "repeated_random_tokens", "HeadAtlasOverTexts"} <= set(explorer.__all__)


@pytest.mark.slow
def test_smollm2_built_in_set_finds_induction_and_previous_token_heads(default_lm):
    started = time.perf_counter()
    atlas = head_atlas(default_lm, progress=False)
    took = time.perf_counter() - started
    print(f"\n{atlas!r}: {took:.1f} s for {atlas.n_texts} sequences of {atlas.n_tokens[0]} tokens")
    for name in ("induction", "previous_token"):
        print(name, ", ".join(f"{layer}.{head} {mean:.3f} ± {std:.3f}" for layer, head, mean, std in atlas.top(name)))
    assert atlas.n_texts == 32 and atlas.n_tokens == [100] * 32  # SmolLM2 puts nothing before a text
    assert np.nanmax(atlas.mean["induction"]) > 0.3
    assert np.nanmax(atlas.mean["previous_token"]) > 0.5
