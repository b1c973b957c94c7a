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

__all__ = ["Steer", "add_at", "site_at", "site_module", "steering", "watch"]


def site_at(model: torch.nn.Module, site: str, layer: int) -> tuple[torch.nn.Module, str]:
    """The module that carries ``site`` of block ``layer`` in a loaded model, and "output" or "input"."""
    check_site(site)
    arch = arch_for(model.config.to_dict())
    block = model.get_submodule(f"{arch.layers}.{layer}")
    s = arch.sites[site]
    return (block.get_submodule(s.hook) if s.hook else block), s.at


def site_module(model: torch.nn.Module, site: str, layer: int) -> torch.nn.Module:
    """The module whose output (or, where the table says so, input) carries ``site`` of block ``layer``."""
    return site_at(model, site, layer)[0]


def watch(module: torch.nn.Module, at: str, fn):
    """Call ``fn(hidden)`` with the module's output (or input) hidden state; returns the hook handle."""
    if at == "input":
        return module.register_forward_pre_hook(
            lambda m, args, kwargs: fn(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    return module.register_forward_hook(lambda m, i, o: fn(o[0] if isinstance(o, tuple) else o))


def _adder(delta: torch.Tensor):
    def hook(module, inputs, output):
        if isinstance(output, tuple):  # attention modules return (hidden, weights)
            return (output[0] + delta.to(output[0].device, output[0].dtype),) + output[1:]
        return output + delta.to(output.device, output.dtype)

    return hook


def _input_adder(delta: torch.Tensor):
    def hook(module, args, kwargs):
        if args:  # the hidden state is the first positional argument, or the hidden_states keyword
            return (args[0] + delta.to(args[0].device, args[0].dtype),) + args[1:], kwargs
        h = kwargs["hidden_states"]
        return args, {**kwargs, "hidden_states": h + delta.to(h.device, h.dtype)}

    return hook


def add_at(module: torch.nn.Module, delta: torch.Tensor, at: str = "output"):
    """Add ``delta`` to ``module``'s output (or input); returns the hook handle."""
    if at == "input":
        return module.register_forward_pre_hook(_input_adder(delta), with_kwargs=True)
    return module.register_forward_hook(_adder(delta))


@contextlib.contextmanager
def steering(model: torch.nn.Module, steers: Iterable[Steer]) -> Iterator[torch.nn.Module]:
    """Within the block, every forward pass of ``model`` adds each ``coef * vector`` at its site."""
    handles = []
    try:
        for s in steers:
            module, at = site_at(model, s.site, s.layer)
            delta = s.coef * torch.from_numpy(as_f64(s.vector))  # moved to the hidden state's device when added
            handles.append(add_at(module, delta, at))
        yield model
    finally:
        for h in handles:
            h.remove()
