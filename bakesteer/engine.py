"""Block streaming: run a checkpoint one decoder block at a time, with one block's weights resident.

A ``Model`` is transformers' own module tree built on the meta device (buffers such as rotary
frequencies are real). Weights are read from the safetensors shards with ``readinto`` (no memory
map, so the page cache never counts as this process's memory) into the parameters of one block,
every batch of a job goes through that block, and the block is emptied before the next one loads.
Embeddings, masks and rotary embeddings come from the model's own forward: its decoder blocks are
swapped for catchers that record each block's arguments (per-block masks of sliding-window layers
included) and stop before the final norm. The final norm and LM head (tied or not) load last.

Steers and captures are the hooks of ``bakesteer.hooks``, installed on the block while it runs, so
streamed steering means exactly what hook steering means.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from .arch import Arch, arch_for
from .checkpoint import Checkpoint
from .errors import BakesteerError
from .stored import merged
from .hooks import Steer, add_at, site_at, steering, watch

TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
READ_CHUNK = 16 << 20  # bytes read and converted at a time
HEAD_ALIAS = "embed_out.weight"  # GPT-NeoX checkpoints name the head so; transformers 5 calls it lm_head
Capture = Callable[[int, torch.Tensor], None]  # (batch index, hidden state (B, T, H)) -> None


def pick_device(name: str | None) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``; refuses CUDA where torch sees none."""
    name = name or "cpu"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BakesteerError(f"--device {name} asks for a GPU but torch sees no CUDA device; use --device cpu.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise BakesteerError(f"--device {name} is not a device torch knows; use cpu, cuda or cuda:N.") from None


def _weights_by_mmap() -> None:
    """Ask glibc to serve every allocation of 1 MB or more with its own mapping, returned on free.

    By default glibc raises that threshold to the size of the last freed block (up to 32 MB), after which a
    block's weights come from the heap and are not given back when the block is emptied: the process would
    grow by about one block per block streamed. Elsewhere (no glibc) nothing changes."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: fixed, so it no longer adapts
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def _params_on_meta() -> Iterator[None]:
    """Within the block, new modules get their parameters on the meta device and their buffers for real."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            p = module._parameters[name]
            module._parameters[name] = torch.nn.Parameter(p.to("meta"), requires_grad=False)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def _observer(fn: Capture, index: int):
    """A hook body that shows ``fn`` the hidden state and never replaces it."""
    def see(x: torch.Tensor) -> None:
        fn(index, x)

    return see


class _Stop(Exception):
    """Raised by the last catcher: the final norm runs later, on the real hidden states."""


class _Catcher(torch.nn.Module):
    def __init__(self, index: int, got: dict, last: bool):
        super().__init__()
        self.index, self.got, self.last = index, got, last

    def forward(self, hidden_states, *args, **kwargs):
        self.got[self.index] = (args, kwargs)
        if self.index == 0:
            self.got["hidden"] = hidden_states
        if self.last:
            raise _Stop
        return hidden_states


@dataclass
class Batch:
    """One right-padded batch: token ids and mask (B, T), optional position ids, and the hidden state."""

    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor | None = None
    hidden: torch.Tensor | None = None  # (B, T, H) after the last block run
    calls: dict = field(default_factory=dict)  # block -> (args, kwargs) the model's forward passes it
    cache: object | None = None  # a transformers cache while decoding


@dataclass
class Stream:
    """Texts through one model under one set of steers: batches, steers, and captures per (site, block)."""

    batches: list[Batch]
    steers: list[Steer] = field(default_factory=list)
    captures: dict[tuple[str, int], Capture] = field(default_factory=dict)  # (site or module, block) -> capture
    adds: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # block -> linear -> output delta

    def steers_at(self, block: int) -> list[Steer]:
        return [s for s in self.steers if s.layer == block]


def fits_in_memory(folder: str | os.PathLike, dtype: torch.dtype = torch.float32, copies: int = 2) -> bool:
    """Whether ``copies`` of the checkpoint in ``dtype`` fit in an eighth of this machine's memory (2 GiB at most):
    then a job that passes over the weights many times (decoding) keeps them loaded instead of re-reading them."""
    ckpt = Checkpoint(folder)
    size = torch.empty(0, dtype=dtype).element_size()
    need = copies * sum(math.prod(t.shape) * size for t in ckpt.tensors.values())
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return need <= min(2 << 30, ram // 8)


class Model:
    """One checkpoint in one dtype on one device, run block by block."""

    def __init__(self, folder: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | None = "cpu",
                 config: dict | None = None, attn_implementation: str | None = None, keep: bool = False):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

        _weights_by_mmap()
        self.folder = Path(folder)
        self.ckpt = Checkpoint(self.folder)
        cfg = dict(config if config is not None else self.ckpt.config)
        self.arch: Arch = arch_for(cfg)
        self.n_layers = self.arch.hidden_and_layers(self.arch.config(cfg))[1]
        self.dtype, self.device = dtype, pick_device(device) if isinstance(device, (str, type(None))) else device
        try:
            hf_cfg = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "transformers_version"})
        except (ValueError, TypeError, KeyError) as e:
            raise BakesteerError(f"{self.folder}/config.json does not load in transformers ({e}); "
                                 "fix the config.") from None
        if attn_implementation:
            hf_cfg._attn_implementation = attn_implementation
        if dtype == torch.float64:  # the grouped matmul of transformers' MoE experts has no float64 kernel
            hf_cfg._experts_implementation = "eager"
        with _params_on_meta():
            auto = AutoModelForImageTextToText if self.arch.text_key else AutoModelForCausalLM
            self.model = auto.from_config(hf_cfg, dtype=dtype).eval()
        for m in self.model.modules():
            for k, b in m._buffers.items():
                if b is not None and b.device != self.device:
                    m._buffers[k] = b.to(self.device)
        self.config = self.model.config
        self.text_config = self.config.get_text_config()  # the decoder's own (a multimodal wrapper's text_config)
        self.layers = self.model.get_submodule(self.arch.layers)
        self.base = self.model.base_model
        self.resident: set[str] = set()  # parts whose weights are loaded: "embed", "head", block numbers
        self.peak_blocks = 0  # most decoder blocks ever resident at once
        self.keep = keep  # parts stay loaded once read: for a model that fits (``fits_in_memory``)
        self._files: dict[str, object] = {}

    # -- weights ---------------------------------------------------------------------------------
    def _read(self, key: str) -> torch.Tensor:
        """One stored tensor, read into fresh memory and cast to this model's dtype and device."""
        info = self.ckpt.tensors[key]
        if info.dtype not in TORCH_DTYPES:
            raise BakesteerError(f"{self.folder} stores {key} as {info.dtype}, which bakesteer cannot run; "
                                 "dequantize the checkpoint first.")
        stored = TORCH_DTYPES[info.dtype]
        target = self.dtype if stored.is_floating_point else stored
        out = torch.empty(info.shape, dtype=target)  # (shape) on the CPU, filled chunk by chunk
        path = self.folder / info.shard
        try:
            f = self._files.get(info.shard)
            if f is None:
                f = self._files[info.shard] = open(path, "rb")
            f.seek(info.start)
            self._fill(f, out.view(-1), stored, info.end - info.start)
        except OSError as e:
            raise BakesteerError(f"cannot read {path} ({e.strerror or e}); check the file and the disk, "
                                 "then run the command again.") from None
        return out.to(self.device)

    @staticmethod
    def _fill(f, flat: torch.Tensor, stored: torch.dtype, nbytes: int) -> None:
        """Read ``nbytes`` of ``stored`` values into ``flat``, converting a chunk at a time (no second full copy)."""
        if flat.dtype == stored:
            if f.readinto(flat.view(torch.uint8).numpy()) != nbytes:
                raise OSError(5, "the file ended early")
            return
        size = torch.empty(0, dtype=stored).element_size()
        buf = torch.empty(min(nbytes, READ_CHUNK), dtype=torch.uint8)
        pos = 0
        while pos < nbytes:
            m = min(READ_CHUNK, nbytes - pos)
            if f.readinto(buf[:m].numpy()) != m:
                raise OSError(5, "the file ended early")
            flat[pos // size:(pos + m) // size] = buf[:m].view(stored)
            pos += m

    def _param(self, name: str) -> torch.Tensor:
        """Parameter ``name`` read from the checkpoint: one stored tensor, or the stored experts transformers
        merges into it (bakesteer.stored)."""
        try:
            return self._read(self._key(name))
        except BakesteerError:
            made = merged(name, self.config.model_type, set(self.ckpt.tensors), self._read)
            if made is None:
                raise
            return made.to(self.dtype)

    def _key(self, name: str) -> str:
        """The stored name of parameter ``name``: as named, without the base prefix, the head under its old
        name (GPT-NeoX's ``embed_out``), or for a tied head the input embedding."""
        if name == self._head_weight():
            for alias in (name, HEAD_ALIAS):
                if alias in self.ckpt.tensors:
                    return alias
            if any(getattr(c, "tie_word_embeddings", False) for c in (self.text_config, self.config)):
                return self._stored(self._embed_weight())
        return self._stored(name)

    def _stored(self, name: str) -> str:
        """The checkpoint's name for parameter ``name``, under the family's older prefixes too."""
        return self.ckpt.resolve(name, self.arch.stored_names(name))

    def _embed_weight(self) -> str:
        emb = self.model.get_input_embeddings()
        return next(n for n, m in self.model.named_modules() if m is emb) + ".weight"

    def _head_weight(self) -> str:
        head = self.model.get_output_embeddings()
        return next(n for n, m in self.model.named_modules() if m is head) + ".weight"

    def _load(self, prefix: str, module: torch.nn.Module) -> None:
        for mname, m in module.named_modules():
            for pname in list(m._parameters):
                if m._parameters[pname] is None:
                    continue
                full = ".".join(x for x in (prefix, mname, pname) if x)
                t = self._param(full)
                if t.shape != m._parameters[pname].shape:
                    raise BakesteerError(f"{self.folder} stores {full} with shape {list(t.shape)}, which does not "
                                         "fit the model's config; the checkpoint does not match its config.")
                m._parameters[pname] = torch.nn.Parameter(t, requires_grad=False)
            for bname, b in m._buffers.items():  # persistent buffers the checkpoint holds (an expert-choice bias)
                full = ".".join(x for x in (prefix, mname, bname) if x)
                if b is None or bname in m._non_persistent_buffers_set:
                    continue
                try:
                    m._buffers[bname] = self._read(self._stored(full)).to(b.dtype)
                except BakesteerError:
                    continue  # not stored: the module's own value stands

    @staticmethod
    def _free(module: torch.nn.Module) -> None:
        for m in module.modules():
            for pname, p in m._parameters.items():
                if p is not None:
                    m._parameters[pname] = torch.nn.Parameter(p.to("meta"), requires_grad=False)

    def _tail(self) -> list[tuple[str, torch.nn.Module]]:
        """The modules between the last block and the head, in order: the final norm (where the family has
        one), then those of ``head_in`` the config builds (OPT's project_out)."""
        out = []
        if self.arch.final_norm is not None:
            try:
                out.append((self.arch.final_norm, self.model.get_submodule(self.arch.final_norm)))
            except AttributeError:
                raise BakesteerError(f"{self.folder} has no {self.arch.final_norm}, the final norm of "
                                     f"{self.arch.name}; the model does not match its config.") from None
        for name in self.arch.head_in:
            try:
                out.append((name, self.model.get_submodule(name)))
            except AttributeError:  # not built under this config (None)
                pass
        return out

    def _embed_parts(self) -> list[tuple[str, torch.nn.Module]]:
        """Modules with parameters that the model's forward uses before block 0 (embeddings)."""
        head = self.model.get_output_embeddings()
        skip = {id(self.layers), id(head), *(id(m) for _, m in self._tail())}
        out = []
        for name, m in self.model.named_modules():
            if id(m) in skip or any(n == name or name.startswith(n + ".") for n, _ in out):
                continue
            if any(True for _ in m.parameters(recurse=False)) and not name.startswith(self.arch.layers):
                out.append((name, m))
        return out

    @contextlib.contextmanager
    def part(self, which: int | str) -> Iterator[torch.nn.Module | None]:
        """Within the block, block ``which`` (or "embed", "head") has its weights loaded."""
        if isinstance(which, int):
            mods = [(f"{self.arch.layers}.{which}", self.layers[which])]
        elif which == "embed":
            mods = self._embed_parts()
        else:
            mods = [*self._tail(), (self._head_weight().rsplit(".", 1)[0], self.model.get_output_embeddings())]
        try:
            if not (self.keep and str(which) in self.resident):
                for prefix, m in mods:
                    self._load(prefix, m)
                self.resident.add(str(which))
                self.peak_blocks = max(self.peak_blocks, sum(k.isdigit() for k in self.resident))
            yield mods[0][1] if isinstance(which, int) else None
        finally:
            if not self.keep:
                for _, m in mods:
                    self._free(m)
                self.resident.discard(str(which))

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    # -- running ---------------------------------------------------------------------------------
    def _calls(self, batch: Batch, use_cache: bool = False) -> None:
        """Embed ``batch`` and record each block's arguments by running the model's forward on catchers."""
        got: dict = {}
        real = list(self.layers)
        for i in range(self.n_layers):
            self.layers[i] = _Catcher(i, got, i == self.n_layers - 1)
        kw = {"input_ids": batch.ids.to(self.device), "attention_mask": batch.mask.to(self.device)}
        if batch.positions is not None:
            kw["position_ids"] = batch.positions.to(self.device)
        kw.update(cache=batch.cache, use_cache=True) if use_cache else kw.update(use_cache=False)
        try:
            with torch.no_grad():
                self.base(**kw)
        except _Stop:
            pass
        finally:
            for i, m in enumerate(real):
                self.layers[i] = m
        batch.hidden = got.pop("hidden")
        batch.calls = got

    def embed(self, streams: list[Stream], use_cache: bool = False) -> None:
        """Hidden states entering block 0, and every block's arguments, for each batch of ``streams``."""
        with self.part("embed"):
            for s in streams:
                for b in s.batches:
                    self._calls(b, use_cache)

    def _watch(self, block: torch.nn.Module, i: int, name: str, layer: int, fn):
        """A capture on a site of block ``layer`` or, for a name that is no site, on a module inside the block."""
        from .arch import SITES

        if name in SITES:
            return watch(*site_at(self.model, name, layer), fn)
        return watch(block.get_submodule(name), "output", fn)

    def run_block(self, block: torch.nn.Module, i: int, h: torch.Tensor, call: tuple, steers: list[Steer],
                  captures: dict[tuple[str, int], Capture] | None = None, index: int = 0,
                  adds: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``h`` through resident block ``i`` with ``steers`` hooked, ``adds`` (linear module -> delta) added to
        those linears' outputs (what a changed bias does), and ``captures`` watching what the steers leave."""
        args, kwargs = call
        with steering(self.model, steers):
            handles = [add_at(block.get_submodule(m), d) for m, d in (adds or {}).items()]
            handles += [self._watch(block, i, name, layer, _observer(fn, index))
                        for (name, layer), fn in (captures or {}).items() if layer == i]
            try:
                out = block(h, *args, **kwargs)
            finally:
                for hd in handles:
                    hd.remove()
        return out[0] if isinstance(out, tuple) else out

    def step(self, block: torch.nn.Module, i: int, streams: list[Stream]) -> None:
        """Every batch of ``streams`` through resident block ``i``."""
        for s in streams:
            for k, b in enumerate(s.batches):
                b.hidden = self.run_block(block, i, b.hidden, b.calls[i], s.steers_at(i), s.captures, k,
                                          s.adds.get(i))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from the last block's hidden state, with the resident final norm and head (and the family's
        logit scaling or soft-capping)."""
        for _, m in self._tail():
            h = m(h)
        logits = self.model.get_output_embeddings()(h)
        scale = getattr(self.text_config, "logits_scaling", None)  # Granite divides
        if scale:
            logits = logits / scale
        factor = getattr(self.text_config, "logit_scale", None)  # Cohere multiplies
        if factor:
            logits = logits * factor
        cap = getattr(self.text_config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def forward(self, streams: list[Stream], upto: int | None = None,
                logits: bool = True) -> list[list[torch.Tensor]] | None:
        """Every stream through blocks 0..``upto`` (default all), then the head: per stream, per batch logits."""
        last = self.n_layers - 1 if upto is None else upto
        with torch.no_grad():
            self.embed(streams)
            for i in range(last + 1):
                with self.part(i) as block:
                    self.step(block, i, streams)
            if not logits:
                return None
            with self.part("head"):
                return [[self.head(b.hidden) for b in s.batches] for s in streams]


def batch_of(seqs: list[list[int]], pad: int = 0) -> Batch:
    """Right-padded ids and mask: with causal attention no real token sees a pad."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return Batch(ids, mask)


def batches(seqs: list[list[int]], size: int, pad: int = 0) -> list[Batch]:
    return [batch_of(seqs[i:i + size], pad) for i in range(0, len(seqs), size)]
