"""A tiny Qwen2 or GPT-2 written as llama.cpp's converter writes it, for llama.cpp to run without the
converter (which refuses a tokenizer whose pre-tokenizer hash it does not know): hparams and tensor names
of llama.cpp's qwen2/gpt2 (hand-written here, not read from bakesteer's table) and the tokenizer metadata of
the GGUF the model's tokenizer came from (SmolLM2's)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

_BLOCK = {  # family -> (transformers block prefix, module -> llama.cpp name)
    "qwen2": ("model.layers", {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
                               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                               "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
                               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}),
    "gpt2": ("transformer.h", {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
                               "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}),
}
_TOP = {"qwen2": {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                  "lm_head.weight": "output.weight"},
        "gpt2": {"transformer.wte.weight": "token_embd.weight", "transformer.wpe.weight": "position_embd.weight",
                 "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias"}}
_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # GPT-2 stores these (in, out): transposed


def tensors(family: str, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    prefix, names = _BLOCK[family]
    out = {gname: np.asarray(state[k], np.float32) for k, gname in _TOP[family].items() if k in state}
    for key, t in state.items():
        if not key.startswith(prefix + "."):
            continue
        layer, rest = key[len(prefix) + 1:].split(".", 1)
        module, kind = rest.rsplit(".", 1)
        if module in names:
            t = np.asarray(t, np.float32)
            out[f"blk.{layer}.{names[module]}.{kind}"] = t.T.copy() if module in _CONV1D and kind == "weight" else t
    return out


def _hparams(w, family: str, cfg) -> None:
    if family == "gpt2":
        w.add_context_length(cfg.n_positions)
        w.add_embedding_length(cfg.n_embd)
        w.add_feed_forward_length(4 * cfg.n_embd)
        w.add_block_count(cfg.n_layer)
        w.add_head_count(cfg.n_head)
        w.add_layer_norm_eps(cfg.layer_norm_epsilon)
        return
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]) if getattr(cfg, "rope_parameters", None)
                         else float(cfg.rope_theta))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)


def write(path: Path, family: str, model, tokenizer_gguf: Path) -> None:
    """``model`` (a loaded transformers model) as an F32 llama.cpp GGUF of ``family``."""
    import gguf

    w = gguf.GGUFWriter(str(path), family)
    _hparams(w, family, model.config)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    reader = gguf.GGUFReader(str(tokenizer_gguf))
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            vtype = field.types[0]
            w.add_key_value(key, field.contents(), vtype,
                            sub_type=field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    for name, t in tensors(family, state).items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
