"""Which causal-LM families of the installed transformers attention-explorer captures exactly.

For each family: a tiny random model from its own default config (tests/tiny_models.py), then
  - generated ids against plain `generate` (greedy, 6 new tokens),
  - every head of every layer against transformers' eager `output_attentions` on the same ids,
  - the positional encoding it reports per layer.
Prints one line a family and a summary. Usage: python benchmarks/survey_architectures.py [model_type ...]
"""

from __future__ import annotations

import sys
import time
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import explorer  # noqa: E402
from tiny_models import Ids, causal_lm_types, eager_attentions, tiny_model  # noqa: E402

PROMPT = [1, 5, 9, 14, 3, 22, 7, 30, 11, 4, 17, 2]


def survey(model_type: str) -> tuple[str, str]:
    """(status, detail) of one family."""
    try:
        model = tiny_model(model_type)
    except Exception as e:  # a family whose defaults cannot be shrunk here: not a capture result
        return "skipped", f"no tiny config: {type(e).__name__}: {str(e)[:90]}"
    try:
        with torch.no_grad():
            plain = model.generate(torch.tensor([PROMPT]), attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long),
                                   max_new_tokens=6, do_sample=False, pad_token_id=0)[0].tolist()
        reference = eager_attentions(model, plain)
    except Exception as e:
        return "skipped", f"transformers itself fails: {type(e).__name__}: {str(e)[:90]}"
    lm = explorer.wrap(model, Ids(), name=model_type)
    try:
        trace = lm.generate(" ".join(map(str, PROMPT)), max_new_tokens=6, progress=False)
    except Exception as e:
        return "fails", f"{type(e).__name__}: {str(e)[:140]}"
    if trace.token_ids != plain:
        return "differs", f"ids {trace.token_ids[len(PROMPT):]} vs plain {plain[len(PROMPT):]}"
    if len(reference) != trace.n_layers:
        return "differs", f"{trace.n_layers} layers captured, eager returned {len(reference)}"
    error = max(float(np.abs(trace.attention(layer, head) - reference[layer][head]).max())
                for layer in range(trace.n_layers) for head in range(trace.n_heads))
    kinds = ",".join(dict.fromkeys(getattr(trace.positional, "layer_kinds", None) or [trace.positional.kind]))
    status = "exact" if error <= 1e-5 else "differs"
    return status, f"max |Δ| {error:.1e}, capture {trace.model.capture}, positions {trace.positional.kind} ({kinds})"


def main(argv: list[str]) -> None:
    warnings.filterwarnings("ignore")
    types = argv or causal_lm_types()
    counts: dict[str, list[str]] = {}
    for model_type in types:
        started = time.perf_counter()
        try:
            status, detail = survey(model_type)
        except Exception:
            status, detail = "fails", traceback.format_exc(limit=2).splitlines()[-1][:140]
        counts.setdefault(status, []).append(model_type)
        print(f"{model_type:28s} {status:8s} {time.perf_counter() - started:5.1f}s  {detail}", flush=True)
    print()
    for status, names in counts.items():
        print(f"{status}: {len(names)}" + ("" if status == "exact" else f"  ({', '.join(names)})"))


if __name__ == "__main__":
    main(sys.argv[1:])
