"""The vocabulary of the architecture table: sites, bias slots, groups, runtimes, and the frozen records a
family's entry is made of (``Site``, ``Approx``, ``Relabel``, ``Gguf``, ``Arch``). The entries themselves are in
``bakesteer.families``; ``bakesteer.arch`` resolves them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Literal, Mapping

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
    # a post-norm block's output is the next block's input: the site folds as these sites of block L+1 (and has
    # no fold at the last block)
    next_block: tuple[str, ...] = ()


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
    windowed: str | None = None  # the target instead when the blocker is a sliding window it can express
    windowed_config: Callable[[Mapping], dict] = lambda cfg: {}  # config keys written for that target
    # fused linears the target has as parts: cfg -> {fused module: ((part module, rows), ...)} (bakesteer.fused)
    split: Callable[[Mapping], Mapping[str, tuple[tuple[str, int], ...]]] | None = None
    caveat: Callable[[Mapping], str | None] = lambda cfg: None  # where the relabel is exact per forward pass only


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
class Wrapper:
    """A multimodal checkpoint whose text decoder is a family of the table: a bake edits that decoder's biases in
    place (flags in ``text_config``), every other tensor (vision tower, projector) is copied byte for byte."""

    model_types: tuple[str, ...]
    default_text: str  # model_type of the text config when it does not say
    prefix: str = "model.language_model"  # module path of the text decoder (its blocks, norm, embeddings)
    stored_as: tuple[tuple[str, str], ...] = ()  # (module prefix, the prefix save_pretrained writes)
    # runtime support of a bake that writes the text decoder as ``measured_text`` (model_type), as Arch's fields;
    # a bake whose text decoder is another family has no rows (only transformers is known to read it)
    measured_text: str = ""
    runtimes: Mapping[str, Mapping[Group, Support]] = field(default_factory=dict)
    measured: Mapping[str, tuple[Group, ...]] = field(default_factory=dict)
    notes: Mapping[tuple[str, Group], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("runtimes", "measured", "notes"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))


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
    final_norm: str | None = "model.norm"  # module path of the norm after the last block (None: there is none)
    head_in: tuple[str, ...] = ()  # modules between the final norm and the head, where the config builds them
    when: Callable[[Mapping], bool] = lambda cfg: True  # the configs of its model types it describes (defaults in)
    legacy: Mapping[str, str] = field(default_factory=dict)  # key readers of older configs want -> key it copies
    unsupported: Callable[[Mapping], str | None] = lambda cfg: None  # a form of the family the sites do not describe
    approx: Approx | None = None  # how a site with no exact fold is approximated on request
    stacked: tuple[str, ...] = ()  # expert projections stored as one (E, in, out) tensor, bias ``<name>_bias`` (E, out)
    packed: tuple[str, ...] = ()  # quant methods that pack only ``stacked`` weights (baked as stored; see experts.py)
    text_key: str | None = None  # a multimodal wrapper's: the config key holding its text decoder's config
    stored_as: tuple[tuple[str, str], ...] = ()  # (module prefix, prefix in older checkpoints), e.g. LLaVA's
    gguf: Gguf | None = None  # the llama.cpp form, where bakesteer bakes GGUF files of this family
    runtimes: Mapping[str, Mapping[Group, Support]] = field(default_factory=dict)  # of a checkpoint written as it
    measured: Mapping[str, tuple[Group, ...]] = field(default_factory=dict)  # runtime -> groups run in RUNTIME_TESTS
    notes: Mapping[tuple[str, Group], str] = field(default_factory=dict)  # (runtime, group) -> what a bake says

    def __post_init__(self) -> None:
        for name in ("linears", "sites", "groups", "defaults", "legacy", "runtimes", "measured", "notes"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        assert set(self.groups) == set(self.linears), self.name
        assert set(self.stacked) <= set(self.linears), self.name

    def bias_slot(self, module: str) -> str:
        return self.linears[module]

    def names(self, layer: int, module: str) -> tuple[str, str]:
        """(weight, bias) key of a linear of block ``layer``; a stacked expert projection's bias is ``<name>_bias``."""
        name = f"{self.layers}.{layer}.{module}"
        return (name, f"{name}_bias") if module in self.stacked else (f"{name}.weight", f"{name}.bias")

    def config(self, cfg: Mapping) -> dict:
        """``cfg`` with this family's defaults filled in (what transformers would read); for a multimodal
        wrapper, its text decoder's config (given the wrapper's or the text config itself)."""
        inner = cfg.get(self.text_key) if self.text_key else None
        return {**self.defaults, **(inner if isinstance(inner, Mapping) else cfg)}

    def stored_names(self, key: str) -> list[str]:
        """``key`` (a module's parameter name) and the names older checkpoints of this family store it under."""
        return [key] + [old + key[len(new):] for new, old in self.stored_as if key.startswith(new)]

    def hidden_and_layers(self, cfg: Mapping) -> tuple[int, int]:
        try:
            return int(cfg[self.dims[0]]), int(cfg[self.dims[1]])
        except (KeyError, TypeError, ValueError):
            raise BakesteerError(f"config.json lacks a valid {self.dims[0]} or {self.dims[1]}; "
                                 "fix the config.") from None

    def group_of(self, key: str) -> Group:
        """The bias group of a checkpoint key such as ``model.layers.3.self_attn.o_proj.bias``."""
        for module, group in self.groups.items():
            if key.endswith(f".{module}_bias" if module in self.stacked else f".{module}.bias"):
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
