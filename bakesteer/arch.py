"""The architecture table: per model family, which module is each site and what a fold touches.

Everything architecture-specific lives here as data: module paths, bias slots, the bias group of each
linear, which runtimes read those groups, llama.cpp's tensor names and the config name of the context
length. A *site* is a point in decoder block L:

    attn_in   output of the pre-attention norm       -> q/k/v biases:   b' = b + a*W v
    mlp_in    output of the pre-MLP norm             -> up/gate biases: b' = b + a*W v
    attn_out  output of the attention module         -> o bias:         b' = b + a*v
    mlp_out   output of the MLP module               -> down bias:      b' = b + a*v
    resid     residual stream after block L          -> down bias:      b' = b + a*v / scale

Module paths are relative to the decoder block and equal the checkpoint key prefixes.
A linear's bias slot is ALWAYS (the modeling code creates it), NEVER (hard-coded
``bias=False``) or the name of the config flag that creates it.

The table is read-only (``MappingProxyType`` inside frozen dataclasses). A test that needs another
entry builds its own ``Arch`` and puts it in play for a block with ``variant(arch)``.
"""
from __future__ import annotations

import contextlib
import dataclasses
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterator, Literal, Mapping

from .errors import BakesteerError

SITES = ("attn_in", "mlp_in", "attn_out", "mlp_out", "resid")
ALWAYS, NEVER = "always", "never"
Layout = Literal["linear", "conv1d"]  # nn.Linear weight (out, in); GPT-2 Conv1D weight (in, out)
Group = Literal["qkv", "o", "mlp"]  # what a runtime reads or drops together
Support = Literal["yes", "ignored", "refused", "unknown"]
GROUPS: tuple[Group, ...] = ("qkv", "o", "mlp")
RUNTIMES = ("transformers", "vLLM", "llama.cpp", "MLX-LM", "TGI", "SGLang", "ExLlamaV2", "CTranslate2",
            "ONNX Runtime")
# How a cell of the runtime table is known: measured (the runtime ran bakes in this test module, for the groups
# each family's ``measured`` names), else read from this source
RUNTIME_TESTS: Mapping[str, str] = MappingProxyType({
    "transformers": "tests/test_equivalence.py", "llama.cpp": "tests/test_llamacpp.py", "MLX-LM": "tests/test_mlx.py",
    "CTranslate2": "tests/test_ctranslate2.py", "ONNX Runtime": "tests/test_onnxruntime.py",
})
READ_FROM: Mapping[str, str] = MappingProxyType({
    "transformers": "transformers 5's modeling_<family>.py",
    "vLLM": "vllm/model_executor/models/<family>.py (version not recorded)",
    "llama.cpp": "llama.cpp's src/llama-model.cpp, the tensors each architecture creates (as vendored by "
                 "llama-cpp-python 0.3.36)",
    "MLX-LM": "mlx_lm/models/<family>.py (0.32.2)",
    "TGI": "text_generation_server/models/custom_modeling/flash_<family>_modeling.py (version not recorded)",
    "SGLang": "sglang/srt/models/<family>.py (version not recorded)",
    "ExLlamaV2": "exllamav2/architecture.py and its module loaders (version not recorded)",
    "CTranslate2": "ctranslate2/converters/transformers.py (4.8.5)",
    "ONNX Runtime": "onnxruntime_genai/models/builder.py and builders/ (0.18.0)",
})


def _frozen(m: Mapping) -> Mapping:
    """A read-only copy, nested mappings included."""
    return MappingProxyType({k: _frozen(v) if isinstance(v, Mapping) else v for k, v in m.items()})


@dataclass(frozen=True)
class Site:
    hook: str  # module whose output carries the site ("" = the decoder block itself)
    fold: tuple[str, ...] | None  # linears whose biases absorb it; None = no exact fold by structure
    rule: Literal["through", "direct"]  # through: b += a*W v (v enters the linear); direct: b += a*v
    scale: str | None = None  # config attribute v is divided by before a direct fold
    why_not: str = ""  # when fold is None: what stands in the way
    at: Literal["output", "input"] = "output"  # the site is the hook module's output, or its input


@dataclass(frozen=True)
class Approx:
    """Where a non-exact site is approximated (``--approx``): slots are (block offset from L, linear).

    The closed form adds the residual displacement after block L at ``place`` (through ``post_norm``,
    the norm between that linear and the residual add, where there is one); the fit then tunes every
    slot. Value biases are left out: softmax rows sum to 1, so a v bias only adds ``O b_v``, a
    constant the o bias already spans.
    """

    slots: tuple[tuple[int, str], ...]
    place: tuple[int, str]
    post_norm: str | None = None


@dataclass(frozen=True)
class Relabel:
    """Rewrite the config as another family where that is exactly equivalent."""

    to: str  # key of the target family in ARCHS
    drop: tuple[str, ...] = ()  # config keys the target family does not know
    blocker: Callable[[Mapping], str | None] = lambda cfg: None  # why it is not exact here, or None


@dataclass(frozen=True)
class Gguf:
    """How llama.cpp stores this family: its architecture name, the tensor name of every linear whose bias
    llama.cpp creates, and where the config values a fold reads live in the GGUF metadata."""

    name: str  # general.architecture
    tensors: Mapping[str, str]  # linear module -> GGUF tensor name (blk.N.<name>.weight / .bias)
    config: Mapping[str, str]  # config name -> metadata key after "<name>."
    layout: Layout = "linear"  # the converter stores every matrix (out, in), GPT-2's Conv1D transposed

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensors", _frozen(self.tensors))
        object.__setattr__(self, "config", _frozen(self.config))


@dataclass(frozen=True)
class Arch:
    name: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]  # config.architectures it accepts; the first is written on relabel
    layers: str  # module path of the decoder blocks
    layout: Layout
    linears: Mapping[str, str]  # linear module -> bias slot (ALWAYS | NEVER | config flag)
    sites: Mapping[str, Site]
    groups: Mapping[str, Group]  # linear module -> the bias group a runtime reads it with
    relabel: Relabel | None = None
    defaults: Mapping[str, object] = field(default_factory=dict)  # config values when config.json omits them
    dims: tuple[str, str] = ("hidden_size", "num_hidden_layers")  # config names of hidden size, block count
    context: str = "max_position_embeddings"  # config name of the context length
    approx: Approx | None = None  # how a site with no exact fold is approximated on request
    gguf: Gguf | None = None  # the llama.cpp form, where bakesteer bakes GGUF files of this family
    runtimes: Mapping[str, Mapping[Group, Support]] = field(default_factory=dict)  # of a checkpoint written as it
    measured: Mapping[str, tuple[Group, ...]] = field(default_factory=dict)  # runtime -> groups run in RUNTIME_TESTS
    notes: Mapping[tuple[str, Group], str] = field(default_factory=dict)  # (runtime, group) -> what a bake says

    def __post_init__(self) -> None:
        for name in ("linears", "sites", "groups", "defaults", "runtimes", "measured", "notes"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        assert set(self.groups) == set(self.linears), self.name

    def bias_slot(self, module: str) -> str:
        return self.linears[module]

    def config(self, cfg: Mapping) -> dict:
        """``cfg`` with this family's defaults filled in (what transformers would read)."""
        return {**self.defaults, **cfg}

    def hidden_and_layers(self, cfg: Mapping) -> tuple[int, int]:
        try:
            return int(cfg[self.dims[0]]), int(cfg[self.dims[1]])
        except (KeyError, TypeError, ValueError):
            raise BakesteerError(f"config.json lacks a valid {self.dims[0]} or {self.dims[1]}; "
                                 "fix the config.") from None

    def group_of(self, key: str) -> Group:
        """The bias group of a checkpoint key such as ``model.layers.3.self_attn.o_proj.bias``."""
        for module, group in self.groups.items():
            if key.endswith(f".{module}.bias"):
                return group
        raise BakesteerError(f"{key} is not the bias of a {self.name} linear layer bakesteer knows.")

    def for_gguf(self) -> Arch:
        """This family as llama.cpp stores it: blocks ``blk``, a bias slot for every tensor llama.cpp names
        (it creates them itself) and none elsewhere; no relabel (a GGUF keeps its architecture)."""
        if self.gguf is None:
            raise BakesteerError(f"bakesteer does not bake {self.name} GGUF files; bake the Hugging Face checkpoint.")
        slots = {m: ALWAYS if m in self.gguf.tensors else NEVER for m in self.linears}
        return dataclasses.replace(self, name=f"{self.name} (GGUF)", layers="blk", layout=self.gguf.layout,
                                   linears=slots, relabel=None, approx=None)


def flag_on(cfg: Mapping, slot: str) -> bool:
    """Whether the bias slot exists under this config."""
    return slot == ALWAYS or (slot != NEVER and bool(cfg.get(slot, False)))


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
            dims=("n_embd", "n_layer"), context="n_positions",
            gguf=Gguf("gpt2", {"attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "mlp.c_fc": "ffn_up",
                               "mlp.c_proj": "ffn_down"}, {"n_embd": "embedding_length", "n_layer": "block_count"}),
            runtimes={**_everywhere(_ALL), **_rt_only(mlxlm=_g(R, R, R), ctranslate2=_ALL, onnxruntime=_g(R, R, R))},
            measured=_ran(llamacpp=("qkv", "mlp"), mlxlm=GROUPS, ctranslate2=GROUPS, onnxruntime=GROUPS),
            notes={**_no_family("MLX-LM", "GPT-2", "0.32.2 wants n_ctx and unprefixed keys, which transformers 5 "
                                                   "does not write"),
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
            defaults={"attention_bias": True},
            runtimes=_rt(transformers=_ALL, vllm=_ALL, llamacpp=_g(U, U, U), mlxlm=_g(R, R, R), tgi=_ALL,
                         sglang=_g(U, U, Y), exllamav2=_g(U, U, U), ctranslate2=_g(R, R, R), onnxruntime=_g(R, R, R)),
            measured=_ran(mlxlm=GROUPS, ctranslate2=GROUPS, onnxruntime=GROUPS),
            notes={**{k: v for rt in ("CTranslate2", "MLX-LM") for k, v in _no_family(
                       rt, "GPT-NeoX", "it reads rotary_pct, which transformers 5 moved into rope_parameters").items()},
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
            # llama.cpp: q/k/v and MLP run in tests/test_llamacpp.py; o (wo_b, optional) read from its granite graph
            runtimes=_rt(transformers=_ALL, vllm=_ALL, llamacpp=_ALL, mlxlm=_ALL, tgi=_ALL,
                         sglang=_g(I, I, I), exllamav2=_ALL, ctranslate2=_g(R, R, R), onnxruntime=_ALL),
            measured=_ran(llamacpp=("qkv", "mlp"), mlxlm=GROUPS, ctranslate2=GROUPS, onnxruntime=GROUPS),
            notes=_no_family("CTranslate2", "Granite", _NO_CT2_LOADER),
        ),
        Arch(
            "mistral", ("mistral",), ("MistralForCausalLM",), "model.layers", "linear",
            {m: NEVER for m in _LLAMA_LINEARS}, _PRE_NORM_SITES, _LLAMA_GROUPS,
            relabel=Relabel("llama", drop=("sliding_window",), blocker=_sliding_window_in_play),
            defaults={"sliding_window": 4096, "max_position_embeddings": 131072},
        ),
        Arch(
            "qwen2", ("qwen2",), ("Qwen2ForCausalLM",), "model.layers", "linear",
            {**{m: NEVER for m in _LLAMA_LINEARS}, **{m: ALWAYS for m in _QKV}}, _PRE_NORM_SITES, _LLAMA_GROUPS,
            relabel=Relabel(
                "llama", drop=("sliding_window", "use_sliding_window", "max_window_layers", "layer_types"),
                blocker=_sliding_window_in_play,
            ),
            defaults={"use_sliding_window": False},
            # llama.cpp's qwen2 creates the q/k/v biases only: a GGUF bakes attn_in and refuses the rest
            gguf=Gguf("qwen2", {m: _LLAMA_GGUF_NAMES[m] for m in _QKV}, _GGUF_DIMS),
            runtimes=_everywhere(_g(Y, U, U)),
            measured=_ran(llamacpp=("qkv",), mlxlm=("qkv",), ctranslate2=("qkv",), onnxruntime=("qkv",)),
        ),
        Arch("qwen3", ("qwen3",), ("Qwen3ForCausalLM",), "model.layers", "linear", _NO_MLP_BIAS, _PRE_NORM_SITES,
             _LLAMA_GROUPS, defaults=_NO_ATTN_BIAS, approx=APPROX_PRE_NORM,
             runtimes=_rt(transformers=_ALL, vllm=_g(Y, I, U), llamacpp=_g(Y, R, U), mlxlm=_g(R, R, R),
                          tgi=_g(U, U, U), sglang=_g(Y, Y, U), exllamav2=_g(U, U, U), ctranslate2=_g(Y, Y, U),
                          onnxruntime=_g(Y, Y, U)),
             measured=_ran(mlxlm=QKV_O, ctranslate2=QKV_O, onnxruntime=QKV_O),
             notes={("vLLM", "o"): "vLLM's Qwen3 builds o_proj with bias=False: an attn_out or approximate bake is "
                                   "dropped"}),
        Arch("gemma", ("gemma",), ("GemmaForCausalLM",), "model.layers", "linear", _NO_MLP_BIAS, _PRE_NORM_SITES,
             _LLAMA_GROUPS, defaults=_NO_ATTN_BIAS, approx=APPROX_PRE_NORM,
             runtimes=_rt(transformers=_ALL, vllm=_g(I, I, U), llamacpp=_g(Y, R, U), mlxlm=_g(R, R, R),
                          tgi=_g(I, I, U), sglang=_g(I, I, U), exllamav2=_g(Y, Y, U), ctranslate2=_g(I, I, U),
                          onnxruntime=_g(Y, Y, U)),
             measured=_ran(mlxlm=QKV_O, ctranslate2=QKV_O, onnxruntime=QKV_O),
             notes=_CT2_GEMMA),
        Arch("gemma2", ("gemma2",), ("Gemma2ForCausalLM",), "model.layers", "linear", _NO_MLP_BIAS, _SANDWICH_SITES,
             _LLAMA_GROUPS, defaults=_NO_ATTN_BIAS, approx=APPROX_POST_NORM,
             runtimes=_rt(transformers=_ALL, vllm=_g(Y, Y, U), llamacpp=_g(U, U, U), mlxlm=_g(R, R, R),
                          tgi=_g(I, I, U), sglang=_g(Y, Y, U), exllamav2=_g(Y, Y, U), ctranslate2=_g(I, I, U),
                          onnxruntime=_g(Y, Y, U)),
             measured=_ran(mlxlm=QKV_O, ctranslate2=QKV_O, onnxruntime=QKV_O),
             notes=_CT2_GEMMA),
        Arch("gemma3", ("gemma3_text",), ("Gemma3ForCausalLM",), "model.layers", "linear", _NO_MLP_BIAS,
             _SANDWICH_SITES, _LLAMA_GROUPS, defaults=_NO_ATTN_BIAS, approx=APPROX_POST_NORM,
             runtimes=_rt(transformers=_ALL, vllm=_g(Y, Y, U), llamacpp=_g(U, U, U), mlxlm=_g(R, R, R),
                          tgi=_g(I, I, U), sglang=_g(Y, Y, U), exllamav2=_g(U, U, U), ctranslate2=_g(Y, Y, U),
                          onnxruntime=_g(R, R, R)),
             measured=_ran(mlxlm=QKV_O, ctranslate2=QKV_O, onnxruntime=GROUPS),
             notes=_no_family("ONNX Runtime", "Gemma3", "its builder reads rope_parameters['rope_type'], which "
                                                        "transformers 5 nests per layer type")),
        Arch("olmo2", ("olmo2",), ("Olmo2ForCausalLM",), "model.layers", "linear", _NO_MLP_BIAS, _OLMO2_SITES,
             _LLAMA_GROUPS, defaults=_NO_ATTN_BIAS, approx=APPROX_POST_NORM,
             runtimes=_rt(transformers=_ALL, vllm=_g(I, I, U), llamacpp=_g(U, U, U), mlxlm=_ALL,
                          tgi=_g(U, U, U), sglang=_g(Y, Y, U), exllamav2=_g(U, U, U), ctranslate2=_g(R, R, R),
                          onnxruntime=_g(R, R, R)),
             measured=_ran(mlxlm=QKV_O, ctranslate2=GROUPS, onnxruntime=GROUPS),
             notes={**_no_family("CTranslate2", "OLMo2", _NO_CT2_LOADER),
                    **_no_family("ONNX Runtime", "OLMo2", _NO_GENAI_BUILDER)}),
    ]
})

_VARIANTS: ContextVar[tuple[Arch, ...]] = ContextVar("bakesteer_arch_variants", default=())


@contextlib.contextmanager
def variant(arch: Arch) -> Iterator[Arch]:
    """Within the block, ``arch`` answers for its model types and GGUF name ahead of the table (tests and
    measurements that need an entry the table does not have; the table itself never changes)."""
    token = _VARIANTS.set((arch, *_VARIANTS.get()))
    try:
        yield arch
    finally:
        _VARIANTS.reset(token)


def _entries() -> tuple[Arch, ...]:
    return (*_VARIANTS.get(), *ARCHS.values())


def find_arch(cfg: Mapping | None = None, *, gguf: str | None = None) -> Arch:
    """The table entry for a config dict (by ``model_type``) or a GGUF architecture name, or a clear refusal."""
    if gguf is not None:
        found = next((a for a in _entries() if a.gguf and a.gguf.name == gguf), None)
        if found is None:
            known = ", ".join(a.gguf.name for a in ARCHS.values() if a.gguf)
            raise BakesteerError(f"GGUF architecture {gguf!r} is not in bakesteer's table (it bakes GGUF files of: "
                                 f"{known}); bake the Hugging Face checkpoint instead and convert it with llama.cpp.")
        return found
    model_type = (cfg or {}).get("model_type")
    found = next((a for a in _entries() if model_type in a.model_types), None)
    if found is None:
        known = ", ".join(sorted(t for a in ARCHS.values() for t in a.model_types))
        raise BakesteerError(f"model_type {model_type!r} is not supported; bakesteer supports: {known}.")
    return found


arch_for = find_arch  # the name older modules use


def family_of(model_type: str | None) -> str | None:
    """The table name of a model type, or None when the table has no such family."""
    return next((a.name for a in _entries() if model_type in a.model_types), None)


def context_length(cfg: Mapping) -> int | None:
    """The context length a config declares, under its family's own name for it (None when absent)."""
    arch = find_arch(cfg)
    value = arch.config(cfg).get(arch.context)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class FoldTarget:
    """Where a site folds on a given config: the family whose layout is written, and the flags it needs."""

    arch: Arch  # family of the written checkpoint (after a relabel, the target family)
    site: Site
    flags: tuple[str, ...]  # config flags that must be switched on in the written config
    relabelled_from: str | None  # source family when the architecture changes


def _fold_in(arch: Arch, site: Site, cfg: Mapping) -> tuple[str, ...] | None:
    """Flags to switch on for the site's fold in ``arch``, or None when a target has no bias slot."""
    slots = [arch.bias_slot(m) for m in site.fold or ()]
    if not slots or NEVER in slots:
        return None
    return tuple(sorted({s for s in slots if not flag_on(cfg, s)}))


def _resolve(arch: Arch, cfg: Mapping, site_name: str) -> FoldTarget | str:
    """Where ``site_name`` folds on this config (relabelling only where exact), or why it cannot."""
    cfg = arch.config(cfg)
    site = arch.sites[site_name]
    if site.fold is None:
        return site.why_not
    flags = _fold_in(arch, site, cfg)
    if flags is not None:
        return FoldTarget(arch, site, flags, None)
    if arch.relabel is None:
        return f"{arch.name} builds {', '.join(site.fold)} with bias=False, so there is no bias slot"
    blocker = arch.relabel.blocker(cfg)
    if blocker is not None:
        return f"{arch.name} has no bias slot there and {blocker}"
    target = ARCHS[arch.relabel.to]
    tsite = target.sites[site_name]
    # biases the source always has must load in the target, so their flags go on too
    kept = {target.bias_slot(m) for m, s in arch.linears.items() if s == ALWAYS}
    needed = {target.bias_slot(m) for m in tsite.fold or ()}
    return FoldTarget(target, tsite, tuple(sorted(kept | needed)), arch.name)


def is_exact(cfg: Mapping, site_name: str, arch: Arch | None = None) -> bool:
    check_site(site_name)
    return isinstance(_resolve(arch or find_arch(cfg), cfg, site_name), FoldTarget)


def exact_sites(cfg: Mapping, arch: Arch | None = None) -> list[str]:
    """Sites that fold exactly on this config (directly or through an exact relabel)."""
    arch = arch or find_arch(cfg)
    return [s for s in SITES if isinstance(_resolve(arch, cfg, s), FoldTarget)]


def check_site(site_name: str) -> None:
    if site_name not in SITES:
        raise BakesteerError(f"unknown site {site_name!r}; choose one of: {', '.join(SITES)}.")


def _approx_offer(arch: Arch) -> str:
    if arch.approx is None or any(arch.bias_slot(m) == NEVER for _, m in arch.approx.slots):
        return ""
    return ("; or pass --approx to fit the nearest bias slots (attention of block L+1) and measure how "
            "close it gets (on SmolLM2: a median 3% of the steering's own KL, 1-9%)")


def fold_target(cfg: Mapping, site_name: str, arch: Arch | None = None) -> FoldTarget:
    """Resolve where ``site_name`` folds on this config, or refuse naming the sites that work.

    ``arch``: the family to resolve in (default: the table's entry for ``cfg``), e.g. a GGUF's form.
    """
    check_site(site_name)
    arch = arch or find_arch(cfg)
    found = _resolve(arch, cfg, site_name)
    if isinstance(found, FoldTarget):
        return found
    exact = exact_sites(cfg, arch)
    where = f"sites that bake exactly here: {', '.join(exact)}" if exact else "no site bakes exactly here"
    raise BakesteerError(f"site {site_name} cannot be baked exactly into {arch.name}: {found}; {where}"
                         f"{_approx_offer(arch)}.")


def approx_slots(cfg: Mapping, site_name: str, layer: int) -> tuple[Approx, list[tuple[int, str]]]:
    """The slots that approximate ``site_name`` of block ``layer`` on this config, or a clear refusal.

    An exact site never gets here: asking for it is a programming error.
    """
    check_site(site_name)
    assert not is_exact(cfg, site_name), f"{site_name} is exact; fold it exactly"
    arch = find_arch(cfg)
    n_layers = arch.hidden_and_layers(arch.config(cfg))[1]
    ap = arch.approx
    if ap is None or any(arch.bias_slot(m) == NEVER for _, m in ap.slots):
        raise BakesteerError(f"{arch.name} has no attention bias slots to approximate {site_name} with; "
                             f"use an exact site: {', '.join(exact_sites(cfg)) or 'none'}.")
    last = layer + max(off for off, _ in ap.slots)
    if last >= n_layers:
        raise BakesteerError(f"{site_name} of block {layer} is approximated with block {last}, which this "
                             f"{n_layers}-block model lacks; choose a layer below {n_layers - 1}.")
    return ap, [(layer + off, m) for off, m in ap.slots]


# module names steering-vectors' layer_type guesser matches, per layer type (its layer_matching.py)
_SV_NAMES = {"decoder_block": ("",), "self_attn": ("attn", "attention"), "mlp": ("mlp",),
             "input_layernorm": ("ln_1", "input_layernorm"),
             "post_attention_layernorm": ("ln_2", "post_attention_layernorm")}


def steering_vectors_misses(cfg: Mapping, site_name: str, layer_type: str) -> str | None:
    """The module carrying ``site_name`` in this family when steering-vectors' ``layer_type`` guesser would not
    find it, else None (also None for a family the table does not know: nothing to check against)."""
    model_type = cfg.get("model_type")
    arch = next((a for a in _entries() if model_type in a.model_types), None) if model_type else None
    if arch is None:
        return None
    hook = arch.sites[site_name].hook
    return None if any(n in hook for n in _SV_NAMES[layer_type]) else f"{arch.name}'s {hook or 'decoder block'}"
