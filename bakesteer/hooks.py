"""Hook-based reference steering: add coef*v at a site of block L, at every position.

This is the ground truth a bake is tested against. It works on every site of every family
in the table, exact or not, because it only needs the module that carries the site.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch

from .arch import arch_for, check_site
from .steer import Steer, as_f64

__all__ = ["Steer", "site_module", "steering"]


def site_module(model: torch.nn.Module, site: str, layer: int) -> torch.nn.Module:
    """The module whose output carries ``site`` of block ``layer`` in a loaded model."""
    check_site(site)
    arch = arch_for(model.config.to_dict())
    block = model.get_submodule(f"{arch.layers}.{layer}")
    hook = arch.sites[site].hook
    return block.get_submodule(hook) if hook else block


def _adder(delta: torch.Tensor):
    def hook(module, inputs, output):
        if isinstance(output, tuple):  # attention modules return (hidden, weights)
            return (output[0] + delta.to(output[0].dtype),) + output[1:]
        return output + delta.to(output.dtype)

    return hook


@contextlib.contextmanager
def steering(model: torch.nn.Module, steers: Iterable[Steer]) -> Iterator[torch.nn.Module]:
    """Within the block, every forward pass of ``model`` adds each ``coef * vector`` at its site."""
    handles = []
    try:
        for s in steers:
            module = site_module(model, s.site, s.layer)
            param = next(model.parameters())
            delta = (s.coef * torch.from_numpy(as_f64(s.vector))).to(device=param.device)
            handles.append(module.register_forward_hook(_adder(delta)))
        yield model
    finally:
        for h in handles:
            h.remove()
