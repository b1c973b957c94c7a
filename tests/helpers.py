"""Shared checks: hooked vs baked logits and greedy tokens."""
from __future__ import annotations

import torch

from bakesteer.hooks import Steer, steering


@torch.inference_mode()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(ids).logits.float()


@torch.inference_mode()
def greedy(model, ids: torch.Tensor, n: int = 64) -> list[int]:
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[0, ids.shape[1]:].tolist()


def hooked_vs_baked(source, baked, steers: list[Steer], ids: torch.Tensor, reference=None):
    """(max |baked - hooked|, max |hooked - unsteered|, hooked greedy, baked greedy).

    ``reference`` (default: ``source``) is the model the hooked and unsteered logits come from.
    """
    ref = reference if reference is not None else source
    plain = logits(ref, ids)
    with steering(ref, steers):
        hooked = logits(ref, ids)
    baked_l = logits(baked, ids)
    with steering(source, steers):
        g_hooked = greedy(source, ids)
    return float((baked_l - hooked).abs().max()), float((hooked - plain).abs().max()), g_hooked, greedy(baked, ids)
