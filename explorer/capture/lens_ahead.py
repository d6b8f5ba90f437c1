"""The logit lens and the prompt's surprisal read while `generate` decodes, on a core the decoding leaves idle.

On a CPU, one prompt's decoding does not use a second core: SmolLM2's 64 steps take as long on one torch thread
as on two, while the lens is a compute-bound product (30 layers × 64 positions against a 49,152 × 576
unembedding). So, from the first step on, the decoding keeps half the threads and a worker thread with the other
half reads the positions whose next token is already known, a few at a time, each time it is free; at the end the
calling thread reads what is left with all of them. Each cell's numbers come from the same `row_stats` as
`lens.build_lenses` reads after the run, in other tiles and on other threads: equal up to float32 rounding.

Torch's thread count is OpenMP's, kept per calling thread, but setting it also sets what a thread gets at its
first torch call: one that starts its torch work during a run gets the decoding's share.
"""

from __future__ import annotations

import bisect
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait

import torch
from transformers import LogitsProcessor

from .anatomy import Anatomy
from .lens import HiddenStates, next_token_log_probs, row_stats

MIN_POSITIONS = 4  # positions a worker's read takes at least (but the last): each read streams the whole unembedding
# the reader's tiles (1 MB of float32 logits, 256 rows) are smaller than the caller's (8 MB, 2,048 rows): its buffers
# live beside the decoding's, not after them (with the caller's, the 1,024-token peak was 20 MB higher)
READER_TILES = {"tile_floats": 1 << 18, "group_rows": 256}

# OpenMP keeps a thread count per calling thread; torch's own thread pool has one for the process
_OPENMP = "parallel backend: OpenMP" in torch.__config__.parallel_info()
_reader: list = []  # [the process it belongs to, the pool, its thread count]
_reader_made = threading.Lock()
_run = threading.Lock()  # held by the one run that reads ahead: a run beside it (another thread) reads after itself


def _after_fork() -> None:
    global _run
    _run = threading.Lock()  # a child forked during a run has no such run


os.register_at_fork(after_in_child=_after_fork)


def reader(threads: int) -> ThreadPoolExecutor:
    """The process's one reader thread, started at its first use and kept, with `threads` torch threads. A thread of
    its own for each run raised the peak of a 1,024-token generate by about 20 MB (medians of 8 fresh processes:
    213 MB, against 189 MB with the thread kept and 199 MB with the lens read after the run).

    Call it only while no read is under way: torch's set_num_threads also rebuilds process-wide state (its
    pthreadpool, oneDNN's cache) that an operation under way in another thread may be using, so the count is set
    here, by a job this thread waits for, and never while the decoding's reads run."""
    with _reader_made:
        if not _reader or _reader[0] != os.getpid():  # a forked child has the pool but not its thread
            _reader[:] = [os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="logit-lens-reader"), None]
        if _reader[2] != threads:
            _reader[1].submit(torch.set_num_threads, threads).result()
            _reader[2] = threads
        return _reader[1]


class LensAhead(LogitsProcessor):
    """A logits processor that hands the worker, at each step, the kept positions whose next token is known (it
    returns the scores as they are). `finish` gives every kept cell's statistics; `log_probs` each row's prompt
    surprisal; `close` ends the run's reads, whatever happened (the caller calls it on every path). `rows`: each
    batch row's (left padding, the ids the model read first)."""

    def __init__(self, model, anatomy: Anatomy, hidden: HiddenStates, k: int, rows: list[tuple[int, list[int]]]):
        self.model, self.anatomy, self.hidden, self.rows = model, anatomy, hidden, rows
        self.k = min(k, model.get_output_embeddings().weight.shape[0])
        self.threads = torch.get_num_threads()
        self.spare = self.threads // 2
        self.pool: ThreadPoolExecutor | None = None  # the reader, from the first step on
        self.offered = 0  # of hidden.positions, how many a read was given
        self.reads: list[Future] = []  # each read's statistics [L, B, positions, ...], in order
        self.prompt: Future | None = None  # the prompts' log-probabilities, rows one after another
        self.prompt_read: torch.Tensor | None = None
        self.holds_run = False  # whether this run holds _run (for_run takes it, close lets it go)

    @classmethod
    def for_run(cls, model, anatomy: Anatomy, hidden: HiddenStates, k: int, rows, device) -> LensAhead | None:
        """One where it helps: a lens on a CPU run with at least two torch threads; else None (on a GPU the lens
        after the run takes a fraction of the decoding, and one thread has no core to spare). None too while
        another thread's run reads ahead: the two would set the threads of one reader under each other's reads."""
        if hidden.lens is None or torch.device(device).type != "cpu" or torch.get_num_threads() < 2 \
                or not _OPENMP or not _run.acquire(blocking=False):
            return None
        try:
            ahead = cls(model, anatomy, hidden, k, rows)
        except BaseException:
            _run.release()
            raise
        ahead.holds_run = True
        return ahead

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.pool is None:  # the prompt is read (with every thread): the decoding needs half; no read is under way
            self.pool = reader(self.spare)
            torch.set_num_threads(self.threads - self.spare)
            if self.hidden.prompt is not None:
                self.prompt = self._submit(self._prompt_log_probs, *self._prompt_rows())
        if self.hidden.lens is not None and self.hidden.kept is not None and self._idle():
            known = bisect.bisect_right(self.hidden.positions, input_ids.shape[1] - 2)  # p + 1 is in input_ids
            if known - self.offered >= MIN_POSITIONS:
                self.reads.append(self._submit(self._stats, *self._cells(self.offered, known, input_ids)))
                self.offered = known
        return scores

    def _submit(self, read, *args) -> Future:
        return self.pool.submit(read, *args, tiles=READER_TILES)

    def _idle(self) -> bool:
        return all(read.done() for read in [*self.reads, self.prompt] if read is not None)

    def _cells(self, start: int, stop: int, sequences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept states [L, B, n, d] of positions start..stop-1 (a copy: the hooks go on writing) and their
        next tokens [B, n] (0 past the end: such cells are dropped by build_lenses)."""
        positions = torch.tensor(self.hidden.positions[start:stop], device=sequences.device) + 1
        inside = positions < sequences.shape[1]
        targets = sequences[:, positions.clamp(max=sequences.shape[1] - 1)] * inside
        return self.hidden.kept[:, :, start:stop].clone(), targets

    def _stats(self, states: torch.Tensor, targets: torch.Tensor, tiles: dict | None = None) -> tuple:
        with torch.inference_mode():
            n_layers, batch, n, d = states.shape
            stats = row_stats(self.model, self.anatomy, states.reshape(-1, d), targets.reshape(-1).repeat(n_layers),
                              self.k, rank=True, **(tiles or {}))
            return tuple(x.reshape(n_layers, batch, n, *x.shape[1:]) for x in stats)

    def _prompt_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's prompt states but the last, and the tokens they predict, rows one after another."""
        states = torch.cat([self.hidden.prompt[b, pad:-1] for b, (pad, _) in enumerate(self.rows)])
        targets = torch.tensor([i for _, fed in self.rows for i in fed[1:]], device=states.device)
        return states, targets

    def _prompt_log_probs(self, states: torch.Tensor, targets: torch.Tensor, tiles: dict | None = None) -> torch.Tensor:
        with torch.inference_mode():  # the mode is the thread's own: the reader's is not the caller's
            return next_token_log_probs(self.model, self.anatomy, states, targets, tiles)

    def log_probs(self, row: int) -> torch.Tensor | None:
        """ln p of batch row `row`'s read tokens after the first (those _surprisal computes), or None when not
        read here."""
        if self.prompt is None:
            return None
        if self.prompt_read is None:
            self.prompt_read = self.prompt.result() if not self.prompt.cancelled() else \
                self._prompt_log_probs(*self._prompt_rows())
        at = sum(len(fed) - 1 for _, fed in self.rows[:row])
        return self.prompt_read[at : at + len(self.rows[row][1]) - 1]

    def finish(self, sequences: torch.Tensor, progress=None) -> tuple:
        """The statistics of every kept cell, [L, B, positions, ...] each (`row_stats`'s five), once the reads
        given out are done and the rest is read here, with every thread."""
        try:
            reads = [read.result() for read in self.reads]
        finally:
            self.close()  # the reader is idle now: every thread is the caller's again (for its last read too)
        if self.offered < len(self.hidden.positions):
            reads.append(self._stats(*self._cells(self.offered, len(self.hidden.positions), sequences)))
        if progress is not None:
            progress(1, 1)
        return tuple(torch.cat(parts, dim=2) for parts in zip(*reads))

    def close(self) -> None:
        """No more reads of this run (one under way ends first: a fraction of a second), then the caller's threads
        as they were: not before, since setting them while a read runs is what `reader` avoids. Once only: `finish`
        closes, and so does the run's `finally`."""
        try:
            if self.pool is not None:
                mine = [read for read in [*self.reads, self.prompt] if read is not None]
                wait([read for read in mine if not read.cancel()])
                torch.set_num_threads(self.threads)
                self.pool = None  # done: a Ctrl-C in the wait leaves it for the next close to finish
        finally:  # Ctrl-C in the wait must not keep the reader from every later run (its own queue keeps order)
            if self.holds_run:
                self.holds_run = False
                _run.release()
