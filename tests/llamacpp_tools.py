"""llama.cpp as an oracle (llama-cpp-python and llama.cpp's converter): shared by tests and scripts."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import llama_cpp
import numpy as np

from bakesteer.gguf_io import write_copy
from bakesteer.models import cache_dir


class MissingConverter(RuntimeError):
    pass


def load(path: Path):
    """llama.cpp with an F32 KV cache: its default F16 cache alone moves SmolLM2's logits by ~9e-3."""
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2,
                           n_batch=256, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


def logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def greedy(llm, ids: list[int], n: int = 32) -> list[int]:
    llm.reset()
    seq, out = list(ids), []
    llm.eval(seq)
    for _ in range(n):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(t)
        llm.eval([t])
    return out


# Two stand-ins for what a user's own environment would give llama.cpp's converter, applied only when asked:
# - ``no_sentencepiece``: its Gemma and Gemma 2 classes read a sentencepiece tokenizer.model; the tiny models carry
#   SmolLM2's BPE tokenizer, so those classes take the BPE vocabulary path Gemma 3's already has. No tensor changes.
# - ``raw_config``: it reads hparams through the installed transformers' AutoConfig(...).to_dict(); transformers 5
#   drops keys its config classes no longer know (GPT-NeoX's rotary_pct), which transformers 4 kept. The keys of
#   config.json are put back under the ones to_dict gives, as transformers 4 would have returned them.
_SHIM = """
import json, runpy, sys
conv, no_sp, raw = sys.argv.pop(1), sys.argv.pop(1) == "1", sys.argv.pop(1) == "1"
sys.path[:0] = [str(__import__("pathlib").Path(conv).parent), str(__import__("pathlib").Path(conv).parent / "gguf-py")]
from conversion import ModelBase, TextModel
if no_sp:
    import conversion.gemma as g
    g.GemmaModel.set_vocab = g.Gemma2Model.set_vocab = TextModel._set_vocab_gpt2
if raw:
    load = ModelBase.load_hparams
    def with_json(folder, *rest, **kw):
        return {**json.loads((folder / "config.json").read_text()), **load(folder, *rest, **kw)}
    ModelBase.load_hparams = staticmethod(with_json)
runpy.run_path(conv, run_name="__main__")
"""


def convert(hf_dir: Path, out: Path, *, no_sentencepiece: bool = False, raw_config: bool = False) -> None:
    """llama.cpp's own convert_hf_to_gguf.py (from scripts/get_llamacpp.py), to an F32 GGUF."""
    conv = cache_dir() / "llama.cpp" / "convert_hf_to_gguf.py"
    if not conv.is_file():
        raise MissingConverter(f"{conv} is missing; run scripts/get_llamacpp.py (scripts/setup.sh does)")
    env = {**os.environ, "PYTHONPATH": f"{conv.parent / 'gguf-py'}{os.pathsep}{conv.parent}"}
    args = [str(hf_dir), "--outtype", "f32", "--outfile", str(out)]
    if no_sentencepiece or raw_config:
        cmd = [sys.executable, "-c", _SHIM, str(conv), str(int(no_sentencepiece)), str(int(raw_config)), *args]
    else:
        cmd = [sys.executable, str(conv), *args]
    subprocess.run(cmd, check=True, env=env, capture_output=True)


def without(src: Path, out: Path, names: set[str]) -> None:
    """``src`` without the named tensors, everything else byte for byte."""
    import gguf

    write_copy(gguf.GGUFReader(str(src)), out, {}, drop=frozenset(names))


def cvec_logits(path: Path, vec: np.ndarray, layer: int, ids: list[int]) -> np.ndarray:
    """llama.cpp's own control-vector steering: ``vec`` added to the output of block ``layer``."""
    llm = load(path)
    n_embd, n_layer = llm.n_embd(), llama_cpp.llama_model_n_layer(llm.model)
    data = np.zeros(n_embd * n_layer, dtype=np.float32)  # row il-1 holds layer il (layer 0 has none)
    data[(layer - 1) * n_embd: layer * n_embd] = vec
    ptr = data.ctypes.data_as(llama_cpp.ctypes.POINTER(llama_cpp.ctypes.c_float))
    assert llama_cpp.llama_apply_adapter_cvec(llm.ctx, ptr, data.size, n_embd, 1, n_layer - 1) == 0
    return logits(llm, ids)


def rewrite(src: Path, out: Path, replace: dict[str, np.ndarray]) -> None:
    """``src`` with some tensors' values replaced (same names), everything else byte for byte."""
    import gguf

    write_copy(gguf.GGUFReader(str(src)), out, replace)
