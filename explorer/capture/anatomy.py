"""Where a model's decoder blocks and final norm are, found from what the model does rather than by their names.

One short probe pass with a forward hook on every module shows which module list holds the blocks (as many as the
config's layers, run in order), and which module turns the last block's output into what the unembedding reads
(the final norm: `norm`, `ln_f`, `final_layernorm`, a BERT head's transform ... or nothing at all). The result is
checked: the unembedding of that module's output must equal the model's own logits. A model where this fails has
no logit lens, and says why in a sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .shapes import text_config

PROBE = [1, 2, 3, 4, 5]  # token ids every vocabulary has


@dataclass
class Anatomy:
    """The decoder blocks and the final norm (`torch.nn.Identity()` where the model has none), or why not found."""

    blocks: torch.nn.ModuleList | None = None
    final: torch.nn.Module | None = None
    problem: str | None = None  # a sentence: why the model has no logit lens
    logit_scale: float = 1.0  # what the model multiplies lm_head's output by (Cohere's logit_scale, Granite's 1/x)

    @property
    def found(self) -> bool:
        return self.problem is None


def _tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    if hasattr(x, "last_hidden_state"):
        return x.last_hidden_state
    return None


def _n_layers(model) -> int | None:
    config = text_config(model)
    n = getattr(config, "num_hidden_layers", None)
    return n if isinstance(n, int) else None


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is not None and b is not None and a.shape == b.shape and (a is b or torch.equal(a, b))


@torch.no_grad()
def find_anatomy(model) -> Anatomy:
    """The blocks and final norm of `model`, from one probe pass, checked against its logits."""
    name = type(model).__name__
    n_layers = _n_layers(model)
    head = model.get_output_embeddings()
    if head is None:
        return Anatomy(problem=f"{name} has no output embedding (lm_head) to read the residual stream through")
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers and
             len({type(b) for b in m}) <= 2]  # blocks of a kind or two (dense and MoE blocks side by side)
    if not lists:
        return Anatomy(problem=f"cannot find {n_layers} decoder blocks in {name}")
    order: list[torch.nn.Module] = []  # modules in the order they finished
    inputs: dict[int, torch.Tensor | None] = {}
    outputs: dict[int, torch.Tensor | None] = {}
    head_input: list[torch.Tensor] = []

    def finished(module, args, output):
        order.append(module)
        inputs.setdefault(id(module), _tensor(args) if args else None)
        outputs.setdefault(id(module), _tensor(output))

    handles = [m.register_forward_hook(finished) for m in model.modules() if m is not model and m is not head]
    handles.append(head.register_forward_pre_hook(lambda _m, args: head_input.append(args[0])))
    try:
        ids = torch.tensor([PROBE], device=head.weight.device)
        logits = model(input_ids=ids, use_cache=False).logits
    except Exception as e:  # a model that cannot run a bare forward pass: no lens, but capture may still work
        return Anatomy(problem=f"a probe pass of {name} failed ({type(e).__name__}: {e})")
    finally:
        for handle in handles:
            handle.remove()
    if not head_input:
        return Anatomy(problem=f"{name} computed its logits without its output embedding")
    ran = {id(m) for m in order}
    blocks = next((m for m in lists if all(id(b) in ran for b in m)), None)
    if blocks is None:
        return Anatomy(problem=f"the {n_layers}-long module lists of {name} did not all run")
    last = outputs[id(blocks[-1])]
    read = head_input[-1]
    final = None
    if _same(last, read):
        final = torch.nn.Identity()
    else:  # the modules that ran after the last block, each reading what the one before wrote (OPT: norm, project_out)
        chain, current = [], last
        for module in order[order.index(blocks[-1]) + 1 :]:
            if _same(inputs[id(module)], current):
                chain.append(module)
                current = outputs[id(module)]
                if _same(current, read):
                    final = chain[0] if len(chain) == 1 else torch.nn.Sequential(*chain)
                    break
    if final is None:
        return Anatomy(problem=f"no module of {name} (or chain of them) turns its last block's output into what "
                               f"lm_head reads")
    anatomy = Anatomy(blocks=blocks, final=final)
    from .lens import final_logits  # the lens's own arithmetic is what is checked

    try:  # the lens feeds the final norm rows [n, d] of the last block's output: it must take them
        mine, theirs = final_logits(model, last[0, -1:].float(), anatomy), logits[0, -1:].float()
    except Exception as e:
        return Anatomy(problem=f"the final norm of {name} does not take rows of its last block's output "
                               f"({type(e).__name__}: {e})")
    if mine.shape != theirs.shape:
        return Anatomy(problem=f"the last block of {name} writes {tuple(last.shape)}, not rows of the residual stream")
    scale = float((mine * theirs).sum() / (mine * mine).sum().clamp(min=1e-30))
    if not torch.allclose(mine, theirs, atol=1e-4, rtol=1e-4) and torch.allclose(mine * scale, theirs, atol=1e-4,
                                                                                    rtol=1e-4):
        anatomy.logit_scale, mine = scale, mine * scale  # a constant factor after the unembedding
    if not torch.allclose(mine, theirs, atol=1e-4, rtol=1e-4):
        return Anatomy(problem=f"the unembedding of {name}'s last block does not give its own logits "
                               f"(max difference {float((mine - theirs).abs().max()):.2g})")
    return anatomy
