"""ONNX Runtime helpers: export a Hugging Face folder with onnxruntime-genai's model builder (fp32, CPU), then
run the exported model with onnxruntime-genai's Generator: full-sequence logits and greedy tokens."""
from __future__ import annotations

import contextlib
import io
import json
import socket
from pathlib import Path

import numpy as np
import onnxruntime_genai as og
from onnxruntime_genai.models.builder import create_model, parse_extra_options


@contextlib.contextmanager
def no_network():
    """Within the block, any socket connection fails; one attempted is also reported when the block ends (in case
    the code inside caught the failure): the builder must read the local folder only."""
    real, tried = socket.socket.connect, []

    def refuse(self, address):  # noqa: ARG001
        tried.append(address)
        raise OSError(f"no network in this test: the ONNX export tried to reach {address}")

    socket.socket.connect = refuse
    try:
        yield
    finally:
        socket.socket.connect = real
    assert not tried, f"the ONNX export tried to reach {tried}"


def export(folder: Path, out: Path) -> Path:
    """``python -m onnxruntime_genai.models.builder -i folder -o out -p fp32 -e cpu -c <out>_cache``, in-process
    (as the builder's ``__main__`` does: parse_extra_options, then create_model) with its chatter captured."""
    cache = out.parent / f"{out.name}_cache"
    args = (str(folder), str(out), "fp32", "cpu", str(cache))
    with no_network(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        opts = parse_extra_options(None, *args, [])
        create_model(None, *args, **opts)
    return out


def onnx_bias_names(out: Path) -> set[str]:
    """Names of the bias initializers in the exported graph (e.g. ``model.layers.1.attn.qkv_proj.Add.bias``)."""
    import onnx

    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    return {t.name for t in model.graph.initializer if t.name.endswith(".bias")}


def load(out: Path) -> og.Model:
    """The exported folder as onnxruntime-genai loads it (genai_config.json sizes the caches, sliding windows
    included)."""
    return og.Model(str(out))


def _generator(model: og.Model, ids: list[int], max_length: int, **search) -> og.Generator:
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=max_length, **search)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array([ids], dtype=np.int32))
    return gen


def logits(model: og.Model, ids: list[int]) -> np.ndarray:
    """Logits (seq, vocab) of the whole prompt, one forward pass of onnxruntime-genai's Generator."""
    return np.asarray(_generator(model, ids, len(ids) + 1).get_output("logits"))[0].astype(np.float64)


def eos_ids(out: Path) -> list[int]:
    """The end-of-sequence ids the Generator stops at (genai_config.json)."""
    eos = json.loads((out / "genai_config.json").read_text())["model"]["eos_token_id"]
    return eos if isinstance(eos, list) else [eos]


def greedy(model: og.Model, ids: list[int], n: int = 32) -> list[int]:
    """``n`` greedy tokens after the prompt (``min_length``: the end-of-sequence ids are held back until then)."""
    gen = _generator(model, ids, len(ids) + n, do_sample=False, min_length=len(ids) + n)
    while not gen.is_done():
        gen.generate_next_token()
    return [int(t) for t in gen.get_sequence(0)[len(ids):]]
