"""The logit lens read on a spare core while generate decodes (explorer/capture/lens_ahead.py) equals the lens read
after the run, and both equal transformers' own hidden states; the caller's torch threads come back as they were.
Runs from several threads: those of two models read ahead one at a time, those of one model take turns."""

import threading
import time
from concurrent.futures import wait

import numpy as np
import pytest
import torch
from conftest import make_tiny_lm
from test_batch import PROMPTS, _early_eos, _lm
from test_lens_and_norms import assert_lens_matches_hidden_states, expected_surprisal

from explorer.capture import lens_ahead
from explorer.errors import SettingsError


@pytest.fixture
def two_threads():
    """Two torch threads (the lens reads ahead with one, the decoding keeps the other), as they were after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def reads(monkeypatch):
    """The threads each read ran on; the decoding waits at every step until the worker is free, so that it is
    given positions as the steps come however fast or slow this machine is."""
    seen = []
    stats = lens_ahead.LensAhead._stats

    def spied(self, *args, **kwargs):
        seen.append(threading.current_thread().name)
        return stats(self, *args, **kwargs)

    def idle(self):
        wait([read for read in [*self.reads, self.prompt] if read is not None])
        return True

    monkeypatch.setattr(lens_ahead.LensAhead, "_stats", spied)
    monkeypatch.setattr(lens_ahead.LensAhead, "_idle", idle)
    return seen


def assert_same_lens(got, want):
    np.testing.assert_array_equal(got.lens.positions, want.lens.positions)
    np.testing.assert_array_equal(got.lens.top_ids, want.lens.top_ids)
    np.testing.assert_array_equal(got.lens.next_rank, want.lens.next_rank)
    np.testing.assert_allclose(got.lens.top_probs, want.lens.top_probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.lens.next_prob, want.lens.next_prob, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.surprisal, want.surprisal, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_the_lens_read_while_decoding_equals_the_lens_read_after(arch, two_threads, reads):
    lm = make_tiny_lm(arch)
    ahead = lm.generate("Read the lens as you go", max_new_tokens=20, candidates=5, progress=False)
    assert "logit-lens-reader_0" in reads  # the worker read positions during the run, not only the caller at its end
    assert_lens_matches_hidden_states(lm, ahead, 5)
    np.testing.assert_allclose(ahead.surprisal[1:], expected_surprisal(lm, ahead), rtol=1e-4, atol=1e-5)
    torch.set_num_threads(1)  # no core to spare: the lens is read after the run
    reads.clear()
    after = lm.generate("Read the lens as you go", max_new_tokens=20, candidates=5, progress=False)
    assert reads == []
    assert after.token_ids == ahead.token_ids
    assert_same_lens(ahead, after)


def test_a_batch_read_ahead_equals_each_prompt_alone(two_threads, reads):
    lm = make_tiny_lm("llama")
    prompts = ["A short one", "and a rather longer prompt than the first, to pad the batch"]
    together = lm.generate(prompts, max_new_tokens=12, lens="all", progress=False)
    assert "logit-lens-reader_0" in reads
    torch.set_num_threads(1)
    for prompt, got in zip(prompts, together):
        assert_same_lens(got, lm.generate(prompt, max_new_tokens=12, lens="all", progress=False))


def test_the_decoding_keeps_half_the_threads_and_gives_them_back(two_threads):
    lm = make_tiny_lm("llama")
    during = []
    lm.generate("threads", max_new_tokens=6, progress=False, on_token=lambda *_: during.append(torch.get_num_threads()))
    assert set(during) == {1} and torch.get_num_threads() == 2

    def fails(*_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lm.generate("threads", max_new_tokens=6, progress=False, on_token=fails)
    assert torch.get_num_threads() == 2
    assert lm.generate("threads", max_new_tokens=6, lens=None, progress=False,
                       on_token=lambda *_: during.append(torch.get_num_threads())).lens is None
    assert during[-1] == 2  # no lens: nothing to read ahead, every thread decodes


def _runs(case: str):
    """A run of `case` on llama: a batch with a row that ends early, a branch (a forced first token), one token."""
    lm = _lm("llama")
    if case == "batch with an early end":
        eos = _early_eos(lm)
        return lambda: lm.generate(PROMPTS, max_new_tokens=8, eos_token_id=eos, progress=False)
    if case == "branch":
        trace = lm.generate(PROMPTS[2], max_new_tokens=10, progress=False)
        return lambda: [lm.branch(trace, 3, 40, progress=False)]
    return lambda: [lm.generate(PROMPTS[0], max_new_tokens=1, progress=False)]


@pytest.mark.parametrize("case", ["batch with an early end", "branch", "one new token"])
def test_read_ahead_or_after_the_same_lens(case, two_threads, reads):
    run = _runs(case)
    ahead = run()
    torch.set_num_threads(1)
    after = run()
    for got, want in zip(ahead, after, strict=True):
        assert got.token_ids == want.token_ids
        assert_same_lens(got, want)


def test_the_reader_is_given_positions_whenever_it_is_free(two_threads, monkeypatch):
    """The real hand-out: the decoding waits for the reader after each token, so at every step it is free."""
    made = []
    init = lens_ahead.LensAhead.__init__

    def remember(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    def reader_done(*_):
        wait([read for read in [*made[-1].reads, made[-1].prompt] if read is not None])

    monkeypatch.setattr(lens_ahead.LensAhead, "__init__", remember)
    lm = make_tiny_lm("llama")
    trace = lm.generate("hand the positions out", max_new_tokens=20, progress=False, on_token=reader_done)
    assert len(made[-1].reads) >= 3  # 19 positions known before the end, 4 at least a read
    assert made[-1].offered > len(trace.lens.positions) - lens_ahead.MIN_POSITIONS - 2


def test_a_run_beside_one_reading_ahead_reads_its_own_lens_after_itself(two_threads, monkeypatch):
    """Two models' runs at once, in two threads: the first holds the reader, the second (with two threads of its own)
    reads its lens after its run, and both lenses equal their model's hidden states; each thread's count comes back
    as it was."""
    given = []
    for_run = lens_ahead.LensAhead.for_run.__func__

    def noted(cls, *args, **kwargs):
        given.append((threading.current_thread().name, for_run(cls, *args, **kwargs)))
        return given[-1][1]

    monkeypatch.setattr(lens_ahead.LensAhead, "for_run", classmethod(noted))
    lm, other_lm = make_tiny_lm("llama"), make_tiny_lm("gpt2")
    first_is_running, second_is_done = threading.Event(), threading.Event()
    second: dict = {}

    def beside():
        try:
            first_is_running.wait(60)
            torch.set_num_threads(2)  # a new thread starts with the decoding's share: ask for two, as a user may
            second["trace"] = other_lm.generate("the second run", max_new_tokens=10, candidates=5, progress=False)
            second["threads"] = torch.get_num_threads()
        finally:
            second_is_done.set()

    def first_token(*_):
        first_is_running.set()
        second_is_done.wait(60)

    thread = threading.Thread(target=beside, name="beside")
    thread.start()
    first = lm.generate("the first run", max_new_tokens=10, candidates=5, progress=False, on_token=first_token)
    thread.join(60)
    (main, ahead), (other, none) = given[:2]
    assert main == threading.current_thread().name and ahead is not None
    assert other == "beside" and none is None  # the reader was the first run's
    assert second["threads"] == 2 and torch.get_num_threads() == 2
    assert_lens_matches_hidden_states(lm, first, 5)
    assert_lens_matches_hidden_states(other_lm, second["trace"], 5)
    lm.generate("a third run", max_new_tokens=4, progress=False)
    assert given[-1][1] is not None  # the first run let the reader go


def test_two_threads_on_one_model_take_turns_and_each_gets_its_own_trace(two_threads):
    """The hooks of a run catch every forward pass of its model: a second thread's run waits for the first, and
    each trace equals the one its prompt gets alone."""
    lm = make_tiny_lm("llama")
    first_is_running, got = threading.Event(), {}

    def beside():
        first_is_running.wait(60)
        got["beside"] = lm.generate("the second run", max_new_tokens=10, candidates=5, progress=False)

    def first_token(*_):
        if not first_is_running.is_set():
            first_is_running.set()
            time.sleep(0.3)  # time for the other run to start, if it did not wait: not for the outcome, which is fixed

    thread = threading.Thread(target=beside, name="beside")
    thread.start()
    got["first"] = lm.generate("the first run", max_new_tokens=10, candidates=5, progress=False, on_token=first_token)
    thread.join(60)
    for prompt, name in [("the first run", "first"), ("the second run", "beside")]:
        alone = lm.generate(prompt, max_new_tokens=10, candidates=5, progress=False)
        assert got[name].token_ids == alone.token_ids
        for layer in range(alone.n_layers):
            np.testing.assert_allclose(got[name].attention(layer), alone.attention(layer), atol=1e-6)
        assert_same_lens(got[name], alone)
        assert_lens_matches_hidden_states(lm, got[name], 5)


def test_a_run_started_by_a_runs_own_callback_is_refused_and_the_model_stays_usable():
    lm = make_tiny_lm("llama")

    def nested(*_):
        lm.generate("inside", max_new_tokens=2, progress=False)

    with pytest.raises(SettingsError, match="in a run already"):
        lm.generate("outside", max_new_tokens=4, progress=False, on_token=nested)
    alone = lm.generate("outside", max_new_tokens=4, progress=False)
    assert_lens_matches_hidden_states(lm, alone, 10)
