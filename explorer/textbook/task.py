"""The copy task: random digits, a separator, then the same digits again.

    3 1 4 1 5 | 3 1 4 1 5

The right attention is known in advance: to write the j-th digit of the copy, the model must read the j-th
digit of the input. The query sits at position L + j (the separator, or the copy so far) and its source at
position j, L positions back. Lengths vary, so the model has to find the separator to know L.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIGITS = [str(d) for d in range(10)]
SEPARATOR = "|"
VOCAB = DIGITS + [SEPARATOR]


@dataclass(frozen=True)
class CopyTask:
    min_length: int = 4
    max_length: int = 8

    @property
    def block_size(self) -> int:
        return 2 * self.max_length + 1

    def sample(self, rng: np.random.Generator, length: int | None = None) -> list[str]:
        """One example as token strings: L random digits, the separator, the same L digits."""
        length = int(rng.integers(self.min_length, self.max_length + 1)) if length is None else length
        digits = [DIGITS[i] for i in rng.integers(0, len(DIGITS), length)]
        return digits + [SEPARATOR] + digits

    def batch(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets [size, block_size - 1] as token ids; targets are -1 where nothing is to be learned.

        Only the copy is learned (the input digits are random), and positions past an example's end are padding.
        """
        width = self.block_size - 1
        inputs = np.zeros((size, width), dtype=np.int64)
        targets = np.full((size, width), -1, dtype=np.int64)
        for row in range(size):
            ids = [VOCAB.index(t) for t in self.sample(rng)]
            length = (len(ids) - 1) // 2
            inputs[row, : len(ids) - 1] = ids[:-1]
            targets[row, length : len(ids) - 1] = ids[length + 1 :]
        return inputs, targets

    @staticmethod
    def prompt(tokens: list[str]) -> list[str]:
        """The part the model is given: the digits and the separator."""
        return tokens[: tokens.index(SEPARATOR) + 1]


def source_positions(length: int) -> list[tuple[int, int]]:
    """(query, source) pairs: the query at position L + j should read the digit at position j."""
    return [(length + j, j) for j in range(length)]


def weight_on_source(attention: np.ndarray, length: int) -> float:
    """Mean attention weight that the copying queries put on their source digit, for one head's [T, T] matrix."""
    return float(np.mean([attention[q, s] for q, s in source_positions(length)]))
