"""Tools for hostile-input tests: a tiny checkpoint written byte by byte, a watch over a folder tree, and a
runner that demands one sentence, exit 2, no traceback."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save

from helpers import refused, snapshot  # noqa: F401  (shared with every test file)

HIDDEN, INTER, LAYERS, VOCAB = 16, 32, 2, 32
CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN,
          "intermediate_size": INTER, "num_hidden_layers": LAYERS, "num_attention_heads": 2,
          "num_key_value_heads": 2, "vocab_size": VOCAB, "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
          "tie_word_embeddings": False, "torch_dtype": "float32"}


def tensors(dtype=np.float32, seed: int = 0, biases: bool = False) -> dict[str, np.ndarray]:
    """Every tensor of the tiny Llama described by CONFIG (``biases``: with attention biases too)."""
    g = np.random.default_rng(seed)
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,),
              "lm_head.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.k_proj.weight": (HIDDEN, HIDDEN),
                       p + "self_attn.v_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                       p + "mlp.gate_proj.weight": (INTER, HIDDEN), p + "mlp.up_proj.weight": (INTER, HIDDEN),
                       p + "mlp.down_proj.weight": (HIDDEN, INTER), p + "input_layernorm.weight": (HIDDEN,),
                       p + "post_attention_layernorm.weight": (HIDDEN,)})
        if biases:
            shapes.update({p + f"self_attn.{m}_proj.bias": (HIDDEN,) for m in "qkvo"})
    return {k: g.normal(0, 0.2, s).astype(dtype) for k, s in shapes.items()}


def write_model(folder: Path, dtype=np.float32, sharded: bool = False, biases: bool = False) -> Path:
    """A tiny Llama checkpoint; ``sharded`` splits it into three shards with an index; ``biases`` adds
    attention biases (``attention_bias``), so that a bake changes existing tensors."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**CONFIG, "attention_bias": biases}))
    ts = tensors(dtype, biases=biases)
    if not sharded:
        (folder / "model.safetensors").write_bytes(save(ts, metadata={"format": "pt"}))
        return folder
    keys = sorted(ts)
    parts = [keys[i::3] for i in range(3)]
    weight_map = {}
    for i, part in enumerate(parts):
        name = f"model-{i + 1:05d}-of-00003.safetensors"
        (folder / name).write_bytes(save({k: ts[k] for k in part}, metadata={"format": "pt"}))
        weight_map.update({k: name for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def write_vector(path: Path, values=None) -> Path:
    np.save(path, np.ones(HIDDEN, dtype=np.float32) if values is None else np.asarray(values))
    return path


def split_header(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def join_header(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def write_gguf_model(path: Path) -> Path:
    """A tiny llama-architecture GGUF (F32 weights of the blocks only): enough for a GGUF bake."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.embedding_length", HIDDEN)
    w.add_uint32("llama.block_count", LAYERS)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for key, t in tensors().items():
        parts = key.split(".")
        if parts[1] == "layers" and ".".join(parts[3:5]) in names:
            w.add_tensor(f"blk.{parts[2]}.{names['.'.join(parts[3:5])]}.weight", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
