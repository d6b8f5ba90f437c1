"""Training the textbook GPT on the copy task, on a CPU, in about a minute.

    python -m explorer.textbook            # source checkout: retrains the shipped explorer/textbook/trained/
                                           # installed package: writes to the cache folder instead
    python -m explorer.textbook my.safetensors   # writes my.safetensors and my.json; textbook.load("my.safetensors")

AdamW, a learning rate that warms up linearly and then follows a cosine down to a tenth of its peak.
"""

from __future__ import annotations

import argparse
import math
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .model import GPT, GPTConfig
from .task import VOCAB, CopyTask


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to peak/10 at the last step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@contextmanager
def one_thread():
    """Matrices this small train faster on one thread than on two that share a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train(
    task: CopyTask | None = None,
    config: GPTConfig | None = None,
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 3e-3,
    warmup: int = 100,
    weight_decay: float = 0.01,
    seed: int = 0,
    progress: bool = True,
) -> tuple[GPT, list[float]]:
    """Train a fresh GPT on `task`; returns the model and the loss of every step."""
    task = task or CopyTask()
    config = config or GPTConfig(vocab=list(VOCAB), block_size=task.block_size)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    losses = []
    model.train()
    with one_thread():
        for step in (bar := tqdm(range(steps), desc="training", disable=not progress)):
            losses.append(_step(model, optimizer, task, rng, batch_size, learning_rate(step, steps, lr, warmup)))
            if step % 50 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return model, losses


def _step(model: GPT, optimizer, task: CopyTask, rng: np.random.Generator, batch_size: int, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    inputs, targets = task.batch(rng, batch_size)
    _, loss = model(torch.from_numpy(inputs), torch.from_numpy(targets))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


@torch.no_grad()
def accuracy(model: GPT, task: CopyTask | None = None, n: int = 500, seed: int = 12345) -> float:
    """Share of `n` fresh random examples whose whole copy the model writes right, greedily."""
    task = task or CopyTask()
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab
    examples = [[vocab.index(t) for t in task.sample(rng)] for _ in range(n)]
    right = 0
    with one_thread():
        for length in range(task.min_length, task.max_length + 1):
            right += _copied_right(model, [e for e in examples if len(e) == 2 * length + 1], length)
    return right / n


def _copied_right(model: GPT, examples: list[list[int]], length: int) -> int:
    batch = torch.tensor(examples).reshape(-1, 2 * length + 1)
    idx = batch[:, : length + 1]
    while idx.shape[1] < batch.shape[1]:
        logits, _ = model(idx)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return int((idx == batch).all(dim=1).sum())


def default_output() -> Path:
    """Where `python -m explorer.textbook` writes unless told: over the shipped checkpoint in a source checkout
    (retraining it is a change to commit), else into the cache folder (an installed package stays as shipped)."""
    from ..cache import cache_dir
    from .checkpoint import DEFAULT

    in_checkout = (Path(__file__).resolve().parents[2] / "pyproject.toml").is_file()
    return DEFAULT if in_checkout else cache_dir() / DEFAULT.name


def main(argv: list[str] | None = None) -> None:
    """Train the copy model, measure it and write the checkpoint (see the module docstring for where)."""
    from .checkpoint import DEFAULT, save

    parser = argparse.ArgumentParser(prog="python -m explorer.textbook", description="Train the textbook copy model.")
    parser.add_argument("output", nargs="?", type=Path, help=f"the .safetensors to write (default: {default_output()})")
    output = parser.parse_args(argv).output or default_output()
    task = CopyTask()
    started = time.perf_counter()
    model, losses = train(task)
    seconds = time.perf_counter() - started
    score = accuracy(model, task)
    record = {"seconds": round(seconds, 1), "accuracy": score, "threads": 1, "torch": torch.__version__}
    path = save(model, output, losses=losses, task={"name": "copy", **asdict(task)}, training=record)
    print(f"trained in {seconds:.1f} s, final loss {losses[-1]:.4f}, copy accuracy {score:.3f}: {path}")
    if path.resolve() != DEFAULT:
        print(f"load it with explorer.textbook.load({str(path)!r})")


if __name__ == "__main__":
    main()
