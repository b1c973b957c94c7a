"""The architecture table's entries: one ``Arch`` per model family, as data (module paths, bias slots, sites,
runtime support and how it is known). Read it through ``bakesteer.arch``."""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from .archtypes import (ALWAYS, GROUPS, NEVER, RUNTIMES, Approx, Arch, Gguf, Group, Relabel, Site, Support,
                        Wrapper)

def _sliding_window_in_play(cfg: Mapping) -> str | None:
    """Llama has no sliding window, so a relabel is exact only when none is in play."""
    window = cfg.get("sliding_window")
    if cfg.get("use_sliding_window") is False or window is None:
        return None
    if "sliding_attention" not in (cfg.get("layer_types") or ["sliding_attention"]):
        return None
    if window >= cfg.get("max_position_embeddings", 0):
        return None
    return f"it uses a sliding attention window of {window} tokens, which LlamaForCausalLM cannot express"


def _as_smollm3_window(cfg: Mapping, first: int) -> dict:
    """SmolLM3 keys that make it a Llama with the source's sliding windows: the window per block (its layer_types,
    else every block from ``first`` on), RoPE on every block, the head size, tying and token ids stated (SmolLM3's
    defaults differ: tied, ids past a small vocabulary)."""
    n = cfg["num_hidden_layers"]
    head = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kinds = cfg.get("layer_types") or ["sliding_attention" if i >= first else "full_attention" for i in range(n)]
    return {"use_sliding_window": True, "sliding_window": cfg["sliding_window"],
            "layer_types": list(kinds), "no_rope_layers": [1] * n, "head_dim": head,
            "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
            **{k: cfg.get(k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}}


_LLAMA_LINEARS = {
    "self_attn.q_proj": "attention_bias",
    "self_attn.k_proj": "attention_bias",
    "self_attn.v_proj": "attention_bias",
    "self_attn.o_proj": "attention_bias",
    "mlp.gate_proj": "mlp_bias",
    "mlp.up_proj": "mlp_bias",
    "mlp.down_proj": "mlp_bias",
}
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_LLAMA_GROUPS = {**{m: "qkv" for m in _QKV}, "self_attn.o_proj": "o",
                 **{m: "mlp" for m in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}}
_LLAMA_GGUF_NAMES = {  # llama.cpp creates every one of these biases as optional (TENSOR_NOT_REQUIRED)
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GGUF_DIMS = {"hidden_size": "embedding_length", "num_hidden_layers": "block_count"}
_PRE_NORM_SITES = {  # Llama-style pre-norm block: x += attn(norm1(x)); x += mlp(norm2(x))
    "attn_in": Site("input_layernorm", _QKV, "through"),
    "mlp_in": Site("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "through"),
    "attn_out": Site("self_attn", ("self_attn.o_proj",), "direct"),
    "mlp_out": Site("mlp", ("mlp.down_proj",), "direct"),
    "resid": Site("", ("mlp.down_proj",), "direct"),
}
_POST_NORM = "the MLP output passes through post_feedforward_layernorm before the residual add"
_SANDWICH_SITES = {  # Gemma2/Gemma3: every sublayer output is normalised before the residual add
    **_PRE_NORM_SITES,
    "mlp_in": Site("pre_feedforward_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "through"),
    "resid": Site("", None, "direct", why_not=_POST_NORM),
}
_O = "self_attn.o_proj"
_APPROX_SLOTS = ((1, "self_attn.q_proj"), (1, "self_attn.k_proj"), (1, _O))  # o of block L measured no better
APPROX_PRE_NORM = Approx(_APPROX_SLOTS, (1, _O))
APPROX_POST_NORM = Approx(_APPROX_SLOTS, (1, _O), post_norm="post_attention_layernorm")
_OLMO2_SITES = {  # OLMo2: no pre-norms; x += post_attn_norm(attn(x)); x += post_ff_norm(mlp(x))
    **_SANDWICH_SITES,
    "attn_in": Site("self_attn", _QKV, "through", at="input"),
    "mlp_in": Site("mlp", ("mlp.gate_proj", "mlp.up_proj"), "through", at="input"),
}
_NO_MLP_BIAS = {**_LLAMA_LINEARS, "mlp.gate_proj": NEVER, "mlp.up_proj": NEVER, "mlp.down_proj": NEVER}
_NO_BIAS = {"attention_bias": False, "mlp_bias": False}  # transformers' defaults for these flags
_NO_ATTN_BIAS = {"attention_bias": False}


# Which runtimes read each bias group of a checkpoint written as the family. Read from each runtime's model code
# (2024-2026 versions): vLLM/SGLang/TGI skip a bias their module was built without ("ignored"); MLX-LM
# (strict load_weights), llama.cpp (tensor count check) and ExLlamaV2 (asserts) refuse one ("refused").
# A group the family always has (GPT-2, Qwen2's q/k/v) is read by every runtime that runs the family.
def _g(qkv: Support, o: Support, mlp: Support) -> dict[Group, Support]:
    return {"qkv": qkv, "o": o, "mlp": mlp}


Y, I, R, U = "yes", "ignored", "refused", "unknown"
_ALL = _g(Y, Y, Y)


def _rt(**by_runtime: dict[Group, Support]) -> dict[str, dict[Group, Support]]:
    """Support per runtime (keyword names: the runtime with '-', '.' and case dropped)."""
    return {rt: by_runtime[rt.replace("-", "").replace(".", "").replace(" ", "").lower()] for rt in RUNTIMES}


def _everywhere(row: dict[Group, Support]) -> dict[str, dict[Group, Support]]:
    return {rt: row for rt in RUNTIMES}


def _ran(**by_runtime: tuple[Group, ...]) -> dict[str, tuple[Group, ...]]:
    """The groups measured per runtime (keyword names as in ``_rt``); transformers runs every family's bakes."""
    named = {rt.replace("-", "").replace(".", "").replace(" ", "").lower(): rt for rt in RUNTIMES}
    return {"transformers": GROUPS, **{named[k]: v for k, v in by_runtime.items()}}


QKV_O: tuple[Group, ...] = ("qkv", "o")
_CT2_GEMMA = {("CTranslate2", g): "CTranslate2 4.8.5's Gemma and Gemma 2 converters copy the q/k/v/o weights only: "
                                  "the converted model is the unbaked one" for g in QKV_O}


def _no_family(runtime: str, family: str, why: str) -> dict[tuple[str, Group], str]:
    """Notes for a runtime that refuses every checkpoint of the family, baked or not."""
    return {(runtime, g): f"{runtime} refuses every {family} checkpoint, baked or not ({why})" for g in GROUPS}


def _llamacpp_no_o_bias(family: str) -> dict[tuple[str, Group], str]:
    return {("llama.cpp", "o"): f"llama.cpp's {family} has no attention-output bias and refuses a checkpoint with one; "
                                "attention_bias brings q/k/v/o biases together, so bake the GGUF at attn_in instead "
                                "(llama.cpp reads its q/k/v biases)"}


def _qkv_gguf(name: str) -> Gguf:
    """A llama.cpp architecture that creates the q/k/v biases only (as optional tensors)."""
    return Gguf(name, {m: _LLAMA_GGUF_NAMES[m] for m in _QKV}, _GGUF_DIMS)


_MOE = ("its MLP is a mixture of experts: the router and the experts have no bias slots, and a bias after "
        "each expert would be scaled by its routing weight")
_ATTENTION_LINEARS = {m: _LLAMA_LINEARS[m] for m in (*_QKV, _O)}  # an MoE block's experts are no nn.Linear
_ATTENTION_GROUPS = {m: _LLAMA_GROUPS[m] for m in (*_QKV, _O)}
_MOE_SITES = {**_PRE_NORM_SITES, **{s: Site(_PRE_NORM_SITES[s].hook, None, "direct", why_not=_MOE)
                                    for s in ("mlp_in", "mlp_out", "resid")}}
_MLA_IN = ("q_a_proj", "kv_a_proj_with_mqa")  # DeepSeek's projections of the block input (q via a low-rank q_a)
_DEEPSEEK_MLP = ("its MLP has no bias slots (the dense blocks' and the experts' alike), and the routed experts' "
                 "weights sum to routed_scaling_factor, not 1")


_LLAMA4_FF = ("its feed-forward has no bias slots: the MoE blocks' router, routed experts and shared expert are built "
              "without biases (and the router's sigmoid scores scale each expert's input), the dense blocks' MLP "
              "with bias=False")


def _deepseek_without_q_lora(cfg: Mapping) -> str | None:
    if cfg.get("q_lora_rank") is not None:
        return None
    return ("without a low-rank query (q_lora_rank null, as DeepSeek-V2-Lite) its q_proj reads the block input "
            "with bias=False, a form bakesteer does not bake yet")


def _phi3_split(cfg: Mapping) -> dict[str, tuple[tuple[str, int], ...]]:
    """Phi-3's fused rows: qkv_proj is q|k|v (heads x head size each), gate_up_proj is gate|up."""
    head = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * head, (cfg.get("num_key_value_heads") or cfg["num_attention_heads"]) * head
    inter = cfg["intermediate_size"]
    return {"self_attn.qkv_proj": (("self_attn.q_proj", q), ("self_attn.k_proj", kv), ("self_attn.v_proj", kv)),
            "mlp.gate_up_proj": (("mlp.gate_proj", inter), ("mlp.up_proj", inter))}


def _rope(cfg: Mapping) -> tuple[Mapping, str | None]:
    """The RoPE settings (the transformers 5 ``rope_parameters``, or the older ``rope_scaling``) and their type."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    rope = rope if isinstance(rope, Mapping) else {}
    return rope, rope.get("rope_type", rope.get("type"))


def _longrope_cache(cfg: Mapping) -> str | None:
    rope, kind = _rope(cfg)
    if kind != "longrope":
        return None
    n = rope.get("original_max_position_embeddings") or cfg.get("original_max_position_embeddings")
    return (f"long-rope: every forward pass in transformers equals Phi-3's, but Phi-3's generate() drops its KV "
            f"cache when a sequence grows past {n} tokens (its rope factors switch from short to long there) and "
            f"Llama's does not, so cached generation across {n} tokens drifts; and runtimes read a Llama's long-rope "
            "otherwise (measured on tiny models): llama.cpp and ONNX Runtime apply plain RoPE, MLX-LM the long "
            "factors at every length, CTranslate2 refuses it")


def _query_scaling(cfg: Mapping) -> str | None:
    rope, kind = _rope(cfg)
    beta, n = rope.get("llama_4_scaling_beta"), rope.get("original_max_position_embeddings")
    said = []
    if beta:
        said.append(f"Ministral 3 scales its queries by 1 + {beta}·log(1 + floor(position / {n})), which Llama does "
                    f"not: the relabel is exact for positions below {n}, not past them")
    if kind == "yarn":
        said.append("runtimes read the Llama's YaRN RoPE otherwise (measured on tiny models): MLX-LM as transformers "
                    "does, llama.cpp and ONNX Runtime with other rotations, CTranslate2 refuses it")
    return "; ".join(said) or None


def _partial_rotary(cfg: Mapping) -> str | None:
    rope, _ = _rope(cfg)
    factor = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if factor is None or factor == 1.0:
        return None
    return (f"its rotary embedding turns only part of each head (partial_rotary_factor {factor}, as Phi-4-mini), "
            "which no family with bias slots expresses on the same weights")


# GPT-OSS's MLP: the router (an (E, H) linear) and its experts' stacked projections (bakesteer.experts)
_GPT_OSS_MLP = ("mlp.router", "mlp.experts.gate_up_proj", "mlp.experts.down_proj")
_UNMEASURED = {**_everywhere(_g(U, U, U)), "transformers": _ALL}
_NO_GENAI_BUILDER = "onnxruntime-genai 0.18.0's builder has no model for it"
_NO_CT2_LOADER = "CTranslate2 4.8.5's converter has no loader for it"


def _rt_only(**by_runtime: dict[Group, Support]) -> dict[str, dict[Group, Support]]:
    """Rows for some runtimes only (keyword names as in ``_rt``), to override a shared row."""
    named = {rt.replace("-", "").replace(".", "").replace(" ", "").lower(): rt for rt in RUNTIMES}
    return {named[k]: v for k, v in by_runtime.items()}


ARCHS: Mapping[str, Arch] = MappingProxyType({
    a.name: a
    for a in [
        Arch(
            "gpt2", ("gpt2",), ("GPT2LMHeadModel",), "transformer.h", "conv1d",
            {"attn.c_attn": ALWAYS, "attn.c_proj": ALWAYS, "mlp.c_fc": ALWAYS, "mlp.c_proj": ALWAYS},
            {
                "attn_in": Site("ln_1", ("attn.c_attn",), "through"),  # fused q|k|v
                "mlp_in": Site("ln_2", ("mlp.c_fc",), "through"),
                "attn_out": Site("attn", ("attn.c_proj",), "direct"),
                "mlp_out": Site("mlp", ("mlp.c_proj",), "direct"),
                "resid": Site("", ("mlp.c_proj",), "direct"),
            },
            {"attn.c_attn": "qkv", "attn.c_proj": "o", "mlp.c_fc": "mlp", "mlp.c_proj": "mlp"},
            dims=("n_embd", "n_layer"), context="n_positions", legacy={"n_ctx": "n_positions"},
            final_norm="transformer.ln_f",
            gguf=Gguf("gpt2", {"attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "mlp.c_fc": "ffn_up",
                               "mlp.c_proj": "ffn_down"}, {"n_embd": "embedding_length", "n_layer": "block_count"}),
            runtimes={**_everywhere(_ALL), **_rt_only(mlxlm=_g(R, R, R), ctranslate2=_ALL, onnxruntime=_g(R, R, R))},
            measured=_ran(llamacpp=GROUPS, mlxlm=GROUPS, ctranslate2=GROUPS, onnxruntime=GROUPS),
            notes={**_no_family("MLX-LM", "GPT-2", "0.32.2 wants the block keys unprefixed (h.N...), and "
                                                   "transformers 5 writes transformer.h.N..."),
                   **_no_family("ONNX Runtime", "GPT-2", _NO_GENAI_BUILDER)},
        ),
        Arch(
            "gpt_neox", ("gpt_neox",), ("GPTNeoXForCausalLM",), "gpt_neox.layers", "linear",
            {
                "attention.query_key_value": "attention_bias",  # fused, interleaved per head
                "attention.dense": "attention_bias",
                "mlp.dense_h_to_4h": ALWAYS,
                "mlp.dense_4h_to_h": ALWAYS,
            },
            {  # parallel residual or not, the MLP output is added straight to the residual
                "attn_in": Site("input_layernorm", ("attention.query_key_value",), "through"),
                "mlp_in": Site("post_attention_layernorm", ("mlp.dense_h_to_4h",), "through"),
                "attn_out": Site("attention", ("attention.dense",), "direct"),
                "mlp_out": Site("mlp", ("mlp.dense_4h_to_h",), "direct"),
                "resid": Site("", ("mlp.dense_4h_to_h",), "direct"),
            },
            {"attention.query_key_value": "qkv", "attention.dense": "o", "mlp.dense_h_to_4h": "mlp",
             "mlp.dense_4h_to_h": "mlp"},
            defaults={"attention_bias": True}, final_norm="gpt_neox.final_layer_norm",
            legacy={"rotary_pct": "partial_rotary_factor", "rotary_emb_base": "rope_theta"},
            gguf=Gguf("gptneox", {"attention.query_key_value": "attn_qkv", "attention.dense": "attn_output",
                                  "mlp.dense_h_to_4h": "ffn_up", "mlp.dense_4h_to_h": "ffn_down"}, _GGUF_DIMS),
            runtimes=_rt(transformers=_ALL, vllm=_ALL, llamacpp=_ALL, mlxlm=_ALL, tgi=_ALL,
                         sglang=_g(U, U, Y), exllamav2=_g(U, U, U), ctranslate2=_g(R, R, R), onnxruntime=_g(R, R, R)),
            measured=_ran(llamacpp=GROUPS, mlxlm=GROUPS, ctranslate2=GROUPS, onnxruntime=GROUPS),
            notes={**_no_family("CTranslate2", "GPT-NeoX", "its converter reads config.rotary_pct from the loaded "
                                                           "config, which transformers 5 no longer keeps"),
                   **_no_family("ONNX Runtime", "GPT-NeoX", _NO_GENAI_BUILDER)},
        ),
        Arch("llama", ("llama",), ("LlamaForCausalLM",), "model.layers", "linear", _LLAMA_LINEARS, _PRE_NORM_SITES,
             _LLAMA_GROUPS, defaults=_NO_BIAS, gguf=Gguf("llama", _LLAMA_GGUF_NAMES, _GGUF_DIMS),
             runtimes=_rt(transformers=_ALL, vllm=_ALL, llamacpp=_ALL, mlxlm=_ALL, tgi=_ALL, sglang=_g(Y, Y, I),
                          exllamav2=_ALL, ctranslate2=_ALL, onnxruntime=_ALL),
             measured=_ran(llamacpp=GROUPS, mlxlm=GROUPS, ctranslate2=GROUPS, onnxruntime=GROUPS),
             notes={("SGLang", "mlp"): "SGLang builds Llama's MLP without biases: a resid/mlp bake loads but does "
                                       "nothing"}),
        Arch(
            "granite", ("granite",), ("GraniteForCausalLM",), "model.layers", "linear", _LLAMA_LINEARS,
            {**_PRE_NORM_SITES, "resid": Site("", ("mlp.down_proj",), "direct", scale="residual_multiplier")},
            _LLAMA_GROUPS, defaults={**_NO_BIAS, "residual_multiplier": 1.0},
            gguf=Gguf("granite", _LLAMA_GGUF_NAMES, {**_GGUF_DIMS, "residual_multiplier": "residual_scale"}),
            runtimes=_rt(transformers=_ALL, vllm=_ALL, llamacpp=_ALL, mlxlm=_ALL, tgi=_ALL,
                         sglang=_g(I, I, I), exllamav2=_ALL, ctranslate2=_g(R, R, R), onnxruntime=_ALL),
            measured=_ran(llamacpp=GROUPS, mlxlm=GROUPS, ctranslate2=GROUPS, onnxruntime=GROUPS),
            notes=_no_family("CTranslate2", "Granite", _NO_CT2_LOADER),
        ),
        Arch(  # Granite's block with attention sinks, sliding windows and a RoPE base per block (0: none)
            "granite_swa", ("granite_swa",), ("GraniteSWAForCausalLM",), "model.layers", "linear", _LLAMA_LINEARS,
            {**_PRE_NORM_SITES, "resid": Site("", ("mlp.down_proj",), "direct", scale="residual_multiplier")},
            _LLAMA_GROUPS, defaults={**_NO_BIAS, "residual_multiplier": 1.0},
            runtimes={**_UNMEASURED, **_rt_only(llamacpp=_g(U, U, U), mlxlm=_g(R, R, R), ctranslate2=_g(R, R, R),
                                                onnxruntime=_g(R, R, R))},
            measured=_ran(mlxlm=GROUPS, ctranslate2=GROUPS, onnxruntime=GROUPS),
            notes={**_no_family("MLX-LM", "GraniteSWA", "MLX-LM 0.32.2 has no granite_swa model"),
                   **_no_family("CTranslate2", "GraniteSWA", _NO_CT2_LOADER),
                   **_no_family("ONNX Runtime", "GraniteSWA", _NO_GENAI_BUILDER)},
        ),
        Arch(
            "mistral", ("mistral",), ("MistralForCausalLM",), "model.layers", "linear",
            {m: NEVER for m in _LLAMA_LINEARS}, _PRE_NORM_SITES, _LLAMA_GROUPS,
            relabel=Relabel("llama", drop=("sliding_window",), blocker=_sliding_window_in_play, windowed="smollm3",
                            windowed_config=lambda cfg: _as_smollm3_window(cfg, first=0)),
            defaults={"sliding_window": 4096, "max_position_embeddings": 131072},
        ),
        Arch(
            "qwen2", ("qwen2",), ("Qwen2ForCausalLM",), "model.layers", "linear",
            {**{m: NEVER for m in _LLAMA_LINEARS}, **{m: ALWAYS for m in _QKV}}, _PRE_NORM_SITES, _LLAMA_GROUPS,
            relabel=Relabel(
                "llama", drop=("sliding_window", "use_sliding_window", "max_window_layers", "layer_types"),
                blocker=_sliding_window_in_play, windowed="smollm3",
                windowed_config=lambda cfg: _as_smollm3_window(cfg, first=cfg.get("max_window_layers", 28)),
            ),
            defaults={"use_sliding_window": False},
            # llama.cpp's qwen2 creates the q/k/v biases only: a GGUF bakes attn_in and refuses the rest
            gguf=_qkv_gguf("qwen2"),
            runtimes=_everywhere(_g(Y, U, U)),
            measured=_ran(llamacpp=("qkv",), mlxlm=("qkv",), ctranslate2=("qkv",), onnxruntime=("qkv",)),
        ),
        Arch("qwen3", ("qwen3",), ("Qwen3ForCausalLM",), "model.layers", "linear", _NO_MLP_BIAS, _PRE_NORM_SITES,
             _LLAMA_GROUPS, defaults=_NO_ATTN_BIAS, approx=APPROX_PRE_NORM, gguf=_qkv_gguf("qwen3"),
             runtimes=_rt(transformers=_ALL, vllm=_g(Y, I, U), llamacpp=_g(Y, R, U), mlxlm=_g(R, R, R),
                          tgi=_g(U, U, U), sglang=_g(Y, Y, U), exllamav2=_g(U, U, U), ctranslate2=_g(Y, Y, U),
                          onnxruntime=_g(Y, Y, U)),
             measured=_ran(llamacpp=QKV_O, mlxlm=QKV_O, ctranslate2=QKV_O, onnxruntime=QKV_O),
             notes={("vLLM", "o"): "vLLM's Qwen3 builds o_proj with bias=False: an attn_out or approximate bake is "
                                   "dropped", **_llamacpp_no_o_bias("qwen3")}),
        Arch("gemma", ("gemma",), ("GemmaForCausalLM",), "model.layers", "linear", _NO_MLP_BIAS, _PRE_NORM_SITES,
             _LLAMA_GROUPS, defaults=_NO_ATTN_BIAS, approx=APPROX_PRE_NORM, gguf=_qkv_gguf("gemma"),
             runtimes=_rt(transformers=_ALL, vllm=_g(I, I, U), llamacpp=_g(Y, R, U), mlxlm=_g(R, R, R),
                          tgi=_g(I, I, U), sglang=_g(I, I, U), exllamav2=_g(Y, Y, U), ctranslate2=_g(I, I, U),
                          onnxruntime=_g(Y, Y, U)),
             measured=_ran(llamacpp=QKV_O, mlxlm=QKV_O, ctranslate2=QKV_O, onnxruntime=QKV_O),
             notes={**_CT2_GEMMA, **_llamacpp_no_o_bias("gemma")}),
        Arch("gemma2", ("gemma2",), ("Gemma2ForCausalLM",), "model.layers", "linear", _NO_MLP_BIAS, _SANDWICH_SITES,
             _LLAMA_GROUPS, defaults=_NO_ATTN_BIAS, approx=APPROX_POST_NORM, gguf=_qkv_gguf("gemma2"),
             runtimes=_rt(transformers=_ALL, vllm=_g(Y, Y, U), llamacpp=_g(Y, R, U), mlxlm=_g(R, R, R),
                          tgi=_g(I, I, U), sglang=_g(Y, Y, U), exllamav2=_g(Y, Y, U), ctranslate2=_g(I, I, U),
                          onnxruntime=_g(Y, Y, U)),
             measured=_ran(llamacpp=QKV_O, mlxlm=QKV_O, ctranslate2=QKV_O, onnxruntime=QKV_O),
             notes={**_CT2_GEMMA, **_llamacpp_no_o_bias("gemma2")}),
        Arch("gemma3", ("gemma3_text",), ("Gemma3ForCausalLM",), "model.layers", "linear", _NO_MLP_BIAS,
             _SANDWICH_SITES, _LLAMA_GROUPS, defaults=_NO_ATTN_BIAS, approx=APPROX_POST_NORM,
             gguf=_qkv_gguf("gemma3"),
             runtimes=_rt(transformers=_ALL, vllm=_g(Y, Y, U), llamacpp=_g(Y, R, U), mlxlm=_g(R, R, R),
                          tgi=_g(I, I, U), sglang=_g(Y, Y, U), exllamav2=_g(U, U, U), ctranslate2=_g(Y, Y, U),
                          onnxruntime=_g(R, R, R)),
             measured=_ran(llamacpp=QKV_O, mlxlm=QKV_O, ctranslate2=QKV_O, onnxruntime=GROUPS),
             notes={**_no_family("ONNX Runtime", "Gemma3", "its builder reads rope_parameters['rope_type'], which "
                                                           "transformers 5 nests per layer type"),
                    **_llamacpp_no_o_bias("gemma3")}),
        Arch("olmo2", ("olmo2",), ("Olmo2ForCausalLM",), "model.layers", "linear", _NO_MLP_BIAS, _OLMO2_SITES,
             _LLAMA_GROUPS, defaults=_NO_ATTN_BIAS, approx=APPROX_POST_NORM, gguf=_qkv_gguf("olmo2"),
             runtimes=_rt(transformers=_ALL, vllm=_g(I, I, U), llamacpp=_g(Y, R, U), mlxlm=_ALL,
                          tgi=_g(U, U, U), sglang=_g(Y, Y, U), exllamav2=_g(U, U, U), ctranslate2=_g(R, R, R),
                          onnxruntime=_g(R, R, R)),
             measured=_ran(llamacpp=QKV_O, mlxlm=QKV_O, ctranslate2=GROUPS, onnxruntime=GROUPS),
             notes={**_llamacpp_no_o_bias("olmo2"), **_no_family("CTranslate2", "OLMo2", _NO_CT2_LOADER),
                    **_no_family("ONNX Runtime", "OLMo2", _NO_GENAI_BUILDER)}),
        Arch("smollm3", ("smollm3",), ("SmolLM3ForCausalLM",), "model.layers", "linear", _LLAMA_LINEARS,
             _PRE_NORM_SITES, _LLAMA_GROUPS, defaults=_NO_BIAS, gguf=_qkv_gguf("smollm3"),
             runtimes={**_UNMEASURED, **_rt_only(llamacpp=_g(Y, R, R), mlxlm=_ALL, ctranslate2=_g(R, R, R),
                                                 onnxruntime=_g(R, R, R))},
             measured=_ran(llamacpp=GROUPS, mlxlm=GROUPS, ctranslate2=GROUPS, onnxruntime=GROUPS),
             notes={**_llamacpp_no_o_bias("smollm3"),
                    ("llama.cpp", "mlp"): "llama.cpp's smollm3 has no MLP biases and refuses a checkpoint with them",
                    **_no_family("CTranslate2", "SmolLM3", _NO_CT2_LOADER),
                    **_no_family("ONNX Runtime", "SmolLM3", "onnxruntime-genai 0.18.0's builder fails on its NoPE "
                                                            "blocks")}),
        Arch(
            "starcoder2", ("starcoder2",), ("Starcoder2ForCausalLM",), "model.layers", "linear",
            {**{m: "use_bias" for m in (*_QKV, _O)}, "mlp.c_fc": "use_bias", "mlp.c_proj": "use_bias"},
            {**_PRE_NORM_SITES, "mlp_in": Site("post_attention_layernorm", ("mlp.c_fc",), "through"),
             "mlp_out": Site("mlp", ("mlp.c_proj",), "direct"), "resid": Site("", ("mlp.c_proj",), "direct")},
            {**{m: "qkv" for m in _QKV}, _O: "o", "mlp.c_fc": "mlp", "mlp.c_proj": "mlp"},
            defaults={"use_bias": True},
            gguf=Gguf("starcoder2", {**{m: _LLAMA_GGUF_NAMES[m] for m in (*_QKV, _O)}, "mlp.c_fc": "ffn_up",
                                     "mlp.c_proj": "ffn_down"}, _GGUF_DIMS),
            runtimes={**_UNMEASURED, **_rt_only(llamacpp=_ALL, mlxlm=_ALL, ctranslate2=_g(R, R, R),
                                                onnxruntime=_g(R, R, R))},
            measured=_ran(llamacpp=GROUPS, mlxlm=GROUPS, ctranslate2=GROUPS, onnxruntime=GROUPS),
            notes={**_no_family("CTranslate2", "StarCoder2", _NO_CT2_LOADER),
                   **_no_family("ONNX Runtime", "StarCoder2", _NO_GENAI_BUILDER)},
        ),
        Arch(  # parallel block: x + attn(ln(x)) + mlp(ln(x)); attn_in/mlp_in are each branch's own input
            "phi", ("phi",), ("PhiForCausalLM",), "model.layers", "linear",
            {**{m: ALWAYS for m in _QKV}, "self_attn.dense": ALWAYS, "mlp.fc1": ALWAYS, "mlp.fc2": ALWAYS},
            {"attn_in": Site("self_attn", _QKV, "through", at="input"),
             "mlp_in": Site("mlp", ("mlp.fc1",), "through", at="input"),
             "attn_out": Site("self_attn", ("self_attn.dense",), "direct"),
             "mlp_out": Site("mlp", ("mlp.fc2",), "direct"),
             "resid": Site("", ("mlp.fc2",), "direct")},
            {**{m: "qkv" for m in _QKV}, "self_attn.dense": "o", "mlp.fc1": "mlp", "mlp.fc2": "mlp"},
            final_norm="model.final_layernorm",
            gguf=Gguf("phi2", {**{m: _LLAMA_GGUF_NAMES[m] for m in _QKV}, "self_attn.dense": "attn_output",
                               "mlp.fc1": "ffn_up", "mlp.fc2": "ffn_down"}, _GGUF_DIMS),
            runtimes={**_UNMEASURED, **_rt_only(llamacpp=_ALL, mlxlm=_ALL, ctranslate2=_g(R, R, R),
                                                onnxruntime=_ALL)},
            measured=_ran(llamacpp=GROUPS, mlxlm=GROUPS, ctranslate2=GROUPS, onnxruntime=GROUPS),
            notes=_no_family("CTranslate2", "Phi", "its PhiLoader reads config.n_layer, which PhiConfig does not have"),
        ),
        *(Arch(  # fc1/fc2 are members of the block itself (no MLP module): mlp_out is fc2's output
            name, ("opt",), ("OPTForCausalLM",), "model.decoder.layers", "linear",
            {m: "enable_bias" for m in (*_QKV, "self_attn.out_proj", "fc1", "fc2")}, sites,
            {**{m: "qkv" for m in _QKV}, "self_attn.out_proj": "o", "fc1": "mlp", "fc2": "mlp"},
            defaults={"enable_bias": True, "do_layer_norm_before": True},
            when=lambda cfg, pre=pre: bool(cfg["do_layer_norm_before"]) == pre,
            final_norm="model.decoder.final_layer_norm" if pre else None, head_in=("model.decoder.project_out",),
            runtimes={**_UNMEASURED, **_rt_only(llamacpp=_g(R, R, R), mlxlm=_g(R, R, R), ctranslate2=_ALL,
                                                onnxruntime=_g(R, R, R))},
            measured=_ran(llamacpp=GROUPS, mlxlm=GROUPS, ctranslate2=GROUPS, onnxruntime=GROUPS),
            notes={**_no_family("llama.cpp", "OPT", "llama.cpp has no OPT architecture; its converter refuses it"),
                   **_no_family("MLX-LM", "OPT", "MLX-LM 0.32.2 has no OPT model"),
                   **_no_family("ONNX Runtime", "OPT", _NO_GENAI_BUILDER)},
        ) for name, pre, sites in (
            ("opt", True, {"attn_in": Site("self_attn_layer_norm", _QKV, "through"),
                           "mlp_in": Site("final_layer_norm", ("fc1",), "through"),
                           "attn_out": Site("self_attn", ("self_attn.out_proj",), "direct"),
                           "mlp_out": Site("fc2", ("fc2",), "direct"),
                           "resid": Site("", ("fc2",), "direct")}),
            # post-norm (do_layer_norm_before=false, OPT-350m): x -> LN1(x + attn(x)) -> LN2(h + fc2(fc1(h))); the
            # block's output is the next block's input, which enters its attention and its first residual add
            ("opt_post_norm", False, {"attn_in": Site("self_attn", _QKV, "through", at="input"),
                                      "mlp_in": Site("fc1", ("fc1",), "through", at="input"),
                                      "attn_out": Site("self_attn", ("self_attn.out_proj",), "direct"),
                                      "mlp_out": Site("fc2", ("fc2",), "direct"),
                                      "resid": Site("", None, "direct", next_block=("attn_in", "attn_out"))}))),
        Arch(  # no bias anywhere; q|k|v and gate|up fused: relabelled to Llama with the fused weights split
            "phi3", ("phi3",), ("Phi3ForCausalLM",), "model.layers", "linear",
            {m: NEVER for m in ("self_attn.qkv_proj", _O, "mlp.gate_up_proj", "mlp.down_proj")},
            {**_PRE_NORM_SITES, "attn_in": Site("input_layernorm", ("self_attn.qkv_proj",), "through"),
             "mlp_in": Site("post_attention_layernorm", ("mlp.gate_up_proj",), "through")},
            {"self_attn.qkv_proj": "qkv", _O: "o", "mlp.gate_up_proj": "mlp", "mlp.down_proj": "mlp"},
            relabel=Relabel("llama", drop=("sliding_window", "embd_pdrop", "resid_pdrop"),
                            blocker=_sliding_window_in_play, windowed="smollm3",
                            windowed_config=lambda cfg: _as_smollm3_window(cfg, first=0), split=_phi3_split,
                            caveat=_longrope_cache),
            defaults={"sliding_window": None, "max_position_embeddings": 4096}, unsupported=_partial_rotary,
        ),
        Arch(  # Mistral's block plus a query scale past original_max_position_embeddings: relabelled to Llama
            "ministral3", ("ministral3",), ("Ministral3ForCausalLM",), "model.layers", "linear",
            {m: NEVER for m in _LLAMA_LINEARS}, _PRE_NORM_SITES, _LLAMA_GROUPS,
            relabel=Relabel("llama", drop=("sliding_window",), blocker=_sliding_window_in_play, windowed="smollm3",
                            windowed_config=lambda cfg: _as_smollm3_window(cfg, first=0), caveat=_query_scaling),
            defaults={"sliding_window": None},
        ),
        Arch(  # the experts' projections are 3-D parameters, stored one tensor per expert (bakesteer.stored)
            "qwen3_moe", ("qwen3_moe",), ("Qwen3MoeForCausalLM",), "model.layers", "linear", _ATTENTION_LINEARS,
            _MOE_SITES, _ATTENTION_GROUPS, defaults=_NO_ATTN_BIAS, approx=APPROX_PRE_NORM, gguf=_qkv_gguf("qwen3moe"),
            legacy={"num_experts": "num_local_experts"},
            runtimes={**_UNMEASURED, **_rt_only(llamacpp=_g(Y, R, U), mlxlm=_g(R, R, U), ctranslate2=_g(R, R, U),
                                                onnxruntime=_g(R, R, U))},
            measured=_ran(llamacpp=QKV_O, mlxlm=QKV_O, ctranslate2=QKV_O, onnxruntime=QKV_O),
            notes={**_llamacpp_no_o_bias("qwen3moe"), **_no_family("CTranslate2", "Qwen3-MoE", _NO_CT2_LOADER),
                   **_no_family("ONNX Runtime", "Qwen3-MoE", _NO_GENAI_BUILDER)},
        ),
        Arch(  # q/k/v biases under qkv_bias (on by default), o_proj without; a gated shared expert
            "qwen2_moe", ("qwen2_moe",), ("Qwen2MoeForCausalLM",), "model.layers", "linear",
            {**{m: "qkv_bias" for m in _QKV}, _O: NEVER}, _MOE_SITES, _ATTENTION_GROUPS,
            defaults={"qkv_bias": True}, gguf=_qkv_gguf("qwen2moe"),
            runtimes={**_UNMEASURED, **_rt_only(llamacpp=_g(Y, U, U), mlxlm=_g(Y, U, U), ctranslate2=_g(R, U, U),
                                                onnxruntime=_g(R, U, U))},
            measured=_ran(llamacpp=("qkv",), mlxlm=("qkv",), ctranslate2=("qkv",), onnxruntime=("qkv",)),
            notes={**_no_family("CTranslate2", "Qwen2-MoE", _NO_CT2_LOADER),
                   **_no_family("ONNX Runtime", "Qwen2-MoE", _NO_GENAI_BUILDER)},
        ),
        Arch(  # every expert and the router have biases; the chosen experts' routing weights are a softmax
            "gpt_oss", ("gpt_oss",), ("GptOssForCausalLM",), "model.layers", "linear",
            {**_ATTENTION_LINEARS, **{m: ALWAYS for m in _GPT_OSS_MLP}},
            {**_PRE_NORM_SITES, "mlp_in": Site("post_attention_layernorm", _GPT_OSS_MLP[:2], "through"),
             "mlp_out": Site("mlp", (_GPT_OSS_MLP[2],), "direct"), "resid": Site("", (_GPT_OSS_MLP[2],), "direct")},
            {**_ATTENTION_GROUPS, **{m: "mlp" for m in _GPT_OSS_MLP}},
            defaults={"attention_bias": True}, stacked=_GPT_OSS_MLP[1:], packed=("mxfp4",),
            runtimes={**_UNMEASURED, **_rt_only(llamacpp=_ALL, mlxlm=_ALL, ctranslate2=_g(R, R, R),
                                                onnxruntime=_ALL)},
            measured=_ran(llamacpp=GROUPS, mlxlm=GROUPS, ctranslate2=GROUPS, onnxruntime=GROUPS),
            notes={**{("MLX-LM", g): "MLX-LM 0.32.2 reads GPT-OSS in its released layout (experts MXFP4-packed, "
                                     "which a bake keeps); one saved unpacked by transformers is refused, baked or "
                                     "not" for g in GROUPS},
                   **_no_family("CTranslate2", "GPT-OSS", _NO_CT2_LOADER)},
        ),
        Arch(  # q/k norms act after the projections (and their biases); experts and router without biases
            "olmoe", ("olmoe",), ("OlmoeForCausalLM",), "model.layers", "linear", _ATTENTION_LINEARS, _MOE_SITES,
            _ATTENTION_GROUPS, defaults=_NO_ATTN_BIAS, gguf=_qkv_gguf("olmoe"),
            runtimes={**_UNMEASURED, **_rt_only(llamacpp=_g(Y, R, U), mlxlm=_g(Y, Y, U), ctranslate2=_g(R, R, U),
                                                onnxruntime=_g(R, R, U))},
            measured=_ran(llamacpp=QKV_O, mlxlm=QKV_O, ctranslate2=QKV_O, onnxruntime=QKV_O),
            notes={**_llamacpp_no_o_bias("olmoe"), **_no_family("CTranslate2", "OLMoE", _NO_CT2_LOADER),
                   **_no_family("ONNX Runtime", "OLMoE", _NO_GENAI_BUILDER)},
        ),
        Arch(  # sandwich block: post_self_attn_layernorm and post_mlp_layernorm before each residual add
            "glm4", ("glm4",), ("Glm4ForCausalLM",), "model.layers", "linear",
            {**{m: "attention_bias" for m in _QKV}, _O: NEVER, "mlp.gate_up_proj": NEVER, "mlp.down_proj": NEVER},
            {"attn_in": Site("input_layernorm", _QKV, "through"),
             "mlp_in": Site("post_attention_layernorm", None, "through",
                            why_not="GLM4 builds its fused gate_up_proj with bias=False"),
             "attn_out": Site("self_attn", None, "direct", why_not="GLM4 builds o_proj with bias=False, and "
                              "post_self_attn_layernorm normalises the attention output before the residual add"),
             "mlp_out": Site("mlp", None, "direct", why_not="GLM4 builds down_proj with bias=False, and "
                             "post_mlp_layernorm normalises the MLP output before the residual add"),
             "resid": Site("", None, "direct", why_not="post_mlp_layernorm sits between the MLP and the residual add, "
                           "and down_proj has no bias")},
            {**{m: "qkv" for m in _QKV}, _O: "o", "mlp.gate_up_proj": "mlp", "mlp.down_proj": "mlp"},
            defaults={"attention_bias": True}, gguf=_qkv_gguf("glm4"),
            runtimes={**_UNMEASURED, **_rt_only(llamacpp=_g(Y, U, U), mlxlm=_g(Y, U, U), ctranslate2=_g(R, U, U),
                                                onnxruntime=_g(R, U, U))},
            measured=_ran(llamacpp=("qkv",), mlxlm=("qkv",), ctranslate2=("qkv",), onnxruntime=("qkv",)),
            notes={**_no_family("CTranslate2", "GLM4", _NO_CT2_LOADER),
                   **_no_family("ONNX Runtime", "GLM4", _NO_GENAI_BUILDER)},
        ),
        Arch(  # multi-head latent attention: the block's input enters q_a_proj and kv_a_proj_with_mqa only
            "deepseek_v3", ("deepseek_v3",), ("DeepseekV3ForCausalLM",), "model.layers", "linear",
            {**{f"self_attn.{m}": "attention_bias" for m in _MLA_IN}, _O: "attention_bias",
             **{f"self_attn.{m}": NEVER for m in ("q_b_proj", "kv_b_proj")}},
            {**_PRE_NORM_SITES, "attn_in": Site("input_layernorm", tuple(f"self_attn.{m}" for m in _MLA_IN), "through"),
             **{s: Site(_PRE_NORM_SITES[s].hook, None, "direct", why_not=_DEEPSEEK_MLP)
                for s in ("mlp_in", "mlp_out", "resid")}},
            {**{f"self_attn.{m}": "qkv" for m in (*_MLA_IN, "q_b_proj", "kv_b_proj")}, _O: "o"},
            defaults={"attention_bias": False, "q_lora_rank": 1536}, unsupported=_deepseek_without_q_lora,
            runtimes={**_UNMEASURED, **_rt_only(llamacpp=_g(R, R, U), mlxlm=_g(Y, Y, U), ctranslate2=_g(R, R, U),
                                                onnxruntime=_g(R, R, U))},
            measured=_ran(llamacpp=QKV_O, mlxlm=QKV_O, ctranslate2=QKV_O, onnxruntime=QKV_O),
            notes={**{("llama.cpp", g): "llama.cpp's deepseek2 creates no q_a/kv_a/o biases and refuses a checkpoint "
                                        "with them" for g in QKV_O},
                   **_no_family("CTranslate2", "DeepSeek-V3", _NO_CT2_LOADER),
                   **_no_family("ONNX Runtime", "DeepSeek-V3", _NO_GENAI_BUILDER)},
        ),
        *(Arch(  # Qwen2-VL / Qwen2.5-VL's text decoder, inside its wrapper only: Qwen2's block, multimodal RoPE
            name, (name,), (cls,), "model.layers", "linear",
            {**{m: NEVER for m in _LLAMA_LINEARS}, **{m: ALWAYS for m in _QKV}}, _PRE_NORM_SITES, _LLAMA_GROUPS,
            runtimes=_UNMEASURED,  # never written alone: a bake's runtime rows are its wrapper's (WRAPPERS)
        ) for name, cls in (("qwen2_5_vl_text", "Qwen2_5_VLTextModel"), ("qwen2_vl_text", "Qwen2VLTextModel"))),
        Arch(  # Granite's multipliers around a mixture of experts (stored input_linear/output_linear, no biases)
            "granitemoe", ("granitemoe",), ("GraniteMoeForCausalLM",), "model.layers", "linear", _ATTENTION_LINEARS,
            {**_PRE_NORM_SITES, **{s: Site(_PRE_NORM_SITES[s].hook.replace("mlp", "block_sparse_moe"), None, "direct",
                                           why_not=_MOE) for s in ("mlp_in", "mlp_out", "resid")}},
            _ATTENTION_GROUPS, defaults={**_NO_ATTN_BIAS, "residual_multiplier": 1.0},
            gguf=Gguf("granitemoe", {m: _LLAMA_GGUF_NAMES[m] for m in (*_QKV, _O)}, _GGUF_DIMS),
            runtimes={**_UNMEASURED, **_rt_only(llamacpp=_g(Y, Y, U), mlxlm=_g(Y, Y, U), ctranslate2=_g(R, R, U),
                                                onnxruntime=_g(R, R, U))},
            measured=_ran(llamacpp=QKV_O, mlxlm=QKV_O, ctranslate2=QKV_O, onnxruntime=QKV_O),
            notes={**_no_family("CTranslate2", "GraniteMoE", _NO_CT2_LOADER),
                   **_no_family("ONNX Runtime", "GraniteMoE", _NO_GENAI_BUILDER)},
        ),
        Arch(  # Llama 4's text decoder: q/k/v/o under attention_bias (q/k norms, where used, act after them and RoPE)
            "llama4_text", ("llama4_text",), ("Llama4ForCausalLM",), "model.layers", "linear", _ATTENTION_LINEARS,
            {**_PRE_NORM_SITES, **{s: Site(_PRE_NORM_SITES[s].hook.replace("mlp", "feed_forward"), None, "direct",
                                           why_not=_LLAMA4_FF) for s in ("mlp_in", "mlp_out", "resid")}},
            _ATTENTION_GROUPS, defaults=_NO_ATTN_BIAS,
            runtimes={**_UNMEASURED, **_rt_only(llamacpp=_g(R, R, U), mlxlm=_g(R, R, U), ctranslate2=_g(R, R, U),
                                                onnxruntime=_g(R, R, U))},
            measured=_ran(llamacpp=QKV_O, mlxlm=QKV_O, ctranslate2=QKV_O, onnxruntime=QKV_O),
            notes={**{("llama.cpp", g): "llama.cpp's llama4 creates no q/k/v/o biases and refuses a checkpoint with "
                                        "them" for g in QKV_O},
                   **{("MLX-LM", g): "MLX-LM 0.32.2's llama4_text builds q/k/v/o with bias=False and its strict load "
                                     "refuses the biases" for g in QKV_O},
                   **_no_family("CTranslate2", "Llama 4", _NO_CT2_LOADER),
                   **_no_family("ONNX Runtime", "Llama 4", _NO_GENAI_BUILDER)},
        ),
        Arch(  # Llama's block with its own flag for the o bias (q/k/v biases on by default, as released)
            "seed_oss", ("seed_oss",), ("SeedOssForCausalLM",), "model.layers", "linear",
            {**_LLAMA_LINEARS, _O: "attention_out_bias"}, _PRE_NORM_SITES, _LLAMA_GROUPS,
            defaults={"attention_bias": True, "attention_out_bias": False, "mlp_bias": False},
            gguf=_qkv_gguf("seed_oss"),
            runtimes={**_UNMEASURED, **_rt_only(llamacpp=_g(Y, R, R), mlxlm=_ALL, ctranslate2=_g(R, R, R),
                                                onnxruntime=_g(R, R, R))},
            measured=_ran(llamacpp=GROUPS, mlxlm=GROUPS, ctranslate2=GROUPS, onnxruntime=GROUPS),
            notes={**_llamacpp_no_o_bias("seed_oss"),
                   ("llama.cpp", "mlp"): "llama.cpp's seed_oss has no MLP biases and refuses a checkpoint with them",
                   **_no_family("CTranslate2", "Seed-OSS", _NO_CT2_LOADER),
                   **_no_family("ONNX Runtime", "Seed-OSS", _NO_GENAI_BUILDER)},
        ),
        Arch(  # OLMo2's block with sliding windows; llama.cpp's converter writes it as an olmo2 GGUF
            "olmo3", ("olmo3",), ("Olmo3ForCausalLM",), "model.layers", "linear", _NO_MLP_BIAS, _OLMO2_SITES,
            _LLAMA_GROUPS, defaults=_NO_ATTN_BIAS, approx=APPROX_POST_NORM,
            runtimes={**_UNMEASURED, **_rt_only(llamacpp=_g(Y, R, U), mlxlm=_g(Y, Y, U), ctranslate2=_g(R, R, U),
                                                onnxruntime=_g(R, R, U))},
            measured=_ran(llamacpp=QKV_O, mlxlm=QKV_O, ctranslate2=QKV_O, onnxruntime=QKV_O),
            notes={**_llamacpp_no_o_bias("olmo2"), **_no_family("CTranslate2", "OLMo3", _NO_CT2_LOADER),
                   **_no_family("ONNX Runtime", "OLMo3", _NO_GENAI_BUILDER)},
        ),
        Arch(  # parallel block: x + attn(ln_1(x)) + mlp(ln_1(x)); only the MLP has biases
            "gptj", ("gptj",), ("GPTJForCausalLM",), "transformer.h", "linear",
            {**{f"attn.{m}": NEVER for m in ("q_proj", "k_proj", "v_proj", "out_proj")}, "mlp.fc_in": ALWAYS,
             "mlp.fc_out": ALWAYS},
            {"attn_in": Site("attn", None, "through", at="input", why_not="GPT-J builds q/k/v with bias=False"),
             "mlp_in": Site("mlp", ("mlp.fc_in",), "through", at="input"),
             "attn_out": Site("attn", ("mlp.fc_out",), "direct"),  # summed with the MLP's output: fc_out's bias
             "mlp_out": Site("mlp", ("mlp.fc_out",), "direct"),
             "resid": Site("", ("mlp.fc_out",), "direct")},
            {"attn.q_proj": "qkv", "attn.k_proj": "qkv", "attn.v_proj": "qkv", "attn.out_proj": "o",
             "mlp.fc_in": "mlp", "mlp.fc_out": "mlp"},
            dims=("n_embd", "n_layer"), context="n_positions", final_norm="transformer.ln_f",
            runtimes={**_UNMEASURED, **_rt_only(llamacpp=_g(R, R, R), mlxlm=_ALL, ctranslate2=_ALL,
                                                onnxruntime=_g(R, R, R))},
            measured=_ran(llamacpp=GROUPS, mlxlm=GROUPS, ctranslate2=GROUPS, onnxruntime=GROUPS),
            notes={**_no_family("llama.cpp", "GPT-J", "llama.cpp's converter has no GPT-J"),
                   **_no_family("ONNX Runtime", "GPT-J", _NO_GENAI_BUILDER)},
        ),
        *(Arch(  # parallel block: x + attn(ln(x)) + mlp(ln(x)); the MLP has no bias, the attention's o does
            name, (name,), (cls,), "model.layers", "linear", _NO_MLP_BIAS,
            {"attn_in": Site("self_attn", _QKV, "through", at="input"),
             "mlp_in": Site("mlp", None, "through", at="input", why_not=f"{name} builds gate/up with bias=False"),
             "attn_out": Site("self_attn", (_O,), "direct"),
             "mlp_out": Site("mlp", (_O,), "direct"),  # summed with the attention's output: the o bias
             "resid": Site("", (_O,), "direct")},
            _LLAMA_GROUPS, defaults=_NO_ATTN_BIAS, gguf=_qkv_gguf(gguf_name),
            runtimes={**_UNMEASURED, **_rt_only(llamacpp=_g(qkv_cpp, R, U), mlxlm=_g(Y, Y, U),
                                                ctranslate2=_g(R, R, U), onnxruntime=_g(R, R, U))},
            measured=_ran(llamacpp=QKV_O, mlxlm=QKV_O, ctranslate2=QKV_O, onnxruntime=QKV_O),
            notes={**cpp_notes, **_no_family("CTranslate2", shown, _NO_CT2_LOADER),
                   **_no_family("ONNX Runtime", shown, _NO_GENAI_BUILDER)},
        ) for name, shown, cls, gguf_name, qkv_cpp, cpp_notes in (
            ("cohere", "Cohere", "CohereForCausalLM", "command-r", Y, _llamacpp_no_o_bias("command-r")),
            ("cohere2", "Cohere2", "Cohere2ForCausalLM", "cohere2", R, {
                ("llama.cpp", g): "llama.cpp's converter refuses a Cohere2 checkpoint with any non-zero bias; bake the "
                                  "GGUF at attn_in instead (llama.cpp reads its q/k/v biases)" for g in QKV_O}))),
    ]
})


# save_pretrained writes LLaVA-style wrappers under their transformers 4 names (transformers' conversion mapping
# renames them back at load): module prefix -> stored prefix
_QWEN_VL_STORED = (("model.language_model.", "model."), ("model.visual.", "visual."))
INSIDE_WRAPPERS = ("qwen2_5_vl_text", "qwen2_vl_text")  # families of ARCHS only ever written inside a wrapper
_LLAVA_STORED = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                 ("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector."))
_NOT_CT2 = "its converter has no conversion for the wrapper's config"
_NOT_ORT = "onnxruntime-genai 0.18.0's builder has no model for the wrapper"
WRAPPERS: Mapping[str, Wrapper] = MappingProxyType({
    "gemma3": Wrapper(
        ("gemma3",), "gemma3_text", stored_as=_LLAVA_STORED, measured_text="gemma3_text",
        runtimes={**_UNMEASURED, **_rt_only(llamacpp=_g(Y, R, U), mlxlm=_g(R, R, U), ctranslate2=_g(Y, Y, U),
                                            onnxruntime=_g(R, R, R))},
        measured=_ran(llamacpp=QKV_O, mlxlm=QKV_O, ctranslate2=QKV_O, onnxruntime=QKV_O),
        notes={**_llamacpp_no_o_bias("gemma3"),
               **_no_family("ONNX Runtime", "Gemma 3", "its builder reads rope_parameters['rope_type'], which "
                                                       "transformers 5 nests per layer type")}),
    "llava": Wrapper(("llava",), "llama", stored_as=_LLAVA_STORED, measured_text="llama",
                     runtimes={**_UNMEASURED, **_rt_only(llamacpp=_ALL, mlxlm=_ALL, ctranslate2=_g(R, R, R),
                                                         onnxruntime=_g(R, R, R))},
                     measured=_ran(llamacpp=GROUPS, mlxlm=GROUPS, ctranslate2=GROUPS, onnxruntime=GROUPS),
                     notes={**_no_family("CTranslate2", "LLaVA", _NOT_CT2),
                            **_no_family("ONNX Runtime", "LLaVA", _NOT_ORT)}),
    # Mistral 3's text decoder is a Mistral: relabelled to Llama inside text_config where that is exact
    "mistral3": Wrapper(("mistral3",), "mistral", stored_as=_LLAVA_STORED, measured_text="llama",
                        runtimes={**_UNMEASURED, **_rt_only(llamacpp=_ALL, mlxlm=_ALL, ctranslate2=_g(R, R, R),
                                                            onnxruntime=_ALL)},
                        measured=_ran(llamacpp=GROUPS, mlxlm=GROUPS, ctranslate2=GROUPS, onnxruntime=GROUPS),
                        notes=_no_family("CTranslate2", "Mistral 3", _NOT_CT2)),
    # Qwen2-VL and Qwen2.5-VL: its text decoder stored as model.layers.N, the vision tower as visual.
    "qwen2_5_vl": Wrapper(("qwen2_5_vl",), "qwen2_5_vl_text", stored_as=_QWEN_VL_STORED,
                          measured_text="qwen2_5_vl_text",
                          runtimes={**_UNMEASURED, **_rt_only(llamacpp=_g(Y, U, U), mlxlm=_g(Y, U, U),
                                                              ctranslate2=_g(R, U, U), onnxruntime=_g(Y, U, U))},
                          measured=_ran(llamacpp=("qkv",), mlxlm=("qkv",), ctranslate2=("qkv",),
                                        onnxruntime=("qkv",)),
                          notes=_no_family("CTranslate2", "Qwen2.5-VL", _NOT_CT2)),
    "qwen2_vl": Wrapper(("qwen2_vl",), "qwen2_vl_text", stored_as=_QWEN_VL_STORED, measured_text="qwen2_vl_text",
                        runtimes={**_UNMEASURED, **_rt_only(llamacpp=_g(Y, U, U), mlxlm=_g(Y, U, U),
                                                            ctranslate2=_g(R, U, U), onnxruntime=_g(R, U, U))},
                        measured=_ran(llamacpp=("qkv",), mlxlm=("qkv",), ctranslate2=("qkv",),
                                      onnxruntime=("qkv",)),
                        notes={**_no_family("CTranslate2", "Qwen2-VL", _NOT_CT2),
                               **_no_family("ONNX Runtime", "Qwen2-VL", _NOT_ORT)}),
    # Llama 4 (Scout, Maverick) as released: its text decoder is a Llama4ForCausalLM at language_model
    "llama4": Wrapper(("llama4",), "llama4_text", prefix="language_model.model", measured_text="llama4_text",
                      runtimes={**_UNMEASURED, **_rt_only(llamacpp=_g(R, R, U), mlxlm=_g(Y, Y, U),
                                                          ctranslate2=_g(R, R, U), onnxruntime=_g(R, R, U))},
                      measured=_ran(llamacpp=QKV_O, mlxlm=QKV_O, ctranslate2=QKV_O, onnxruntime=QKV_O),
                      notes={**{("llama.cpp", g): "llama.cpp's llama4 creates no q/k/v/o biases and refuses a "
                                                  "checkpoint with them" for g in QKV_O},
                             **_no_family("CTranslate2", "Llama 4", _NOT_CT2),
                             **_no_family("ONNX Runtime", "Llama 4", _NOT_ORT)}),
})
