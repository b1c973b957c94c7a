"""Which inference runtimes honour the bias tensors a bake writes: a table, read from their sources.

A bake writes biases in three groups: ``qkv`` (q/k/v projections, fused or not), ``o`` (attention
output projection) and ``mlp`` (gate/up/down). A runtime either reads a group (``yes``), loads the
checkpoint but drops it without an error (``ignored``: the steering silently does nothing there),
refuses the checkpoint (``refused``), or has not been checked (``unknown``).
"""
from __future__ import annotations

from typing import Iterable, Literal

Support = Literal["yes", "ignored", "refused", "unknown"]
GROUPS = ("qkv", "o", "mlp")
RUNTIMES = ("transformers", "vLLM", "llama.cpp", "MLX-LM", "TGI", "SGLang", "ExLlamaV2")

Y, I, R, U = "yes", "ignored", "refused", "unknown"


def _g(qkv: Support, o: Support, mlp: Support) -> dict[str, Support]:
    return {"qkv": qkv, "o": o, "mlp": mlp}


_ALL = _g(Y, Y, Y)
# family of the *written* checkpoint -> runtime -> group -> support. Read from each runtime's model code
# (2024-2026 versions): vLLM/SGLang/TGI skip a bias their module was built without ("ignored"); MLX-LM
# (strict load_weights), llama.cpp (tensor count check) and ExLlamaV2 (asserts) refuse one ("refused").
# A group the family always has (GPT-2, Qwen2's q/k/v) is read by every runtime that runs the family.
TABLE: dict[str, dict[str, dict[str, Support]]] = {
    "llama": {"transformers": _ALL, "vLLM": _ALL, "llama.cpp": _ALL, "MLX-LM": _ALL, "TGI": _ALL,
              "SGLang": _g(Y, Y, I), "ExLlamaV2": _ALL},
    "granite": {"transformers": _ALL, "vLLM": _ALL, "llama.cpp": _g(U, U, U), "MLX-LM": _ALL, "TGI": _ALL,
                "SGLang": _g(I, I, I), "ExLlamaV2": _ALL},
    "qwen2": {rt: _g(Y, U, U) for rt in ("transformers", "vLLM", "llama.cpp", "MLX-LM", "TGI", "SGLang",
                                         "ExLlamaV2")},
    "qwen3": {"transformers": _ALL, "vLLM": _g(Y, I, U), "llama.cpp": _g(Y, R, U), "MLX-LM": _g(R, R, R),
              "TGI": _g(U, U, U), "SGLang": _g(Y, Y, U), "ExLlamaV2": _g(U, U, U)},
    "gemma": {"transformers": _ALL, "vLLM": _g(I, I, U), "llama.cpp": _g(Y, R, U), "MLX-LM": _g(R, R, R),
              "TGI": _g(I, I, U), "SGLang": _g(I, I, U), "ExLlamaV2": _g(Y, Y, U)},
    "gemma2": {"transformers": _ALL, "vLLM": _g(Y, Y, U), "llama.cpp": _g(U, U, U), "MLX-LM": _g(R, R, R),
               "TGI": _g(I, I, U), "SGLang": _g(Y, Y, U), "ExLlamaV2": _g(Y, Y, U)},
    "gemma3": {"transformers": _ALL, "vLLM": _g(Y, Y, U), "llama.cpp": _g(U, U, U), "MLX-LM": _g(R, R, R),
               "TGI": _g(I, I, U), "SGLang": _g(Y, Y, U), "ExLlamaV2": _g(U, U, U)},
    "olmo2": {"transformers": _ALL, "vLLM": _g(I, I, U), "llama.cpp": _g(U, U, U), "MLX-LM": _ALL,
              "TGI": _g(U, U, U), "SGLang": _g(Y, Y, U), "ExLlamaV2": _g(U, U, U)},
    "gpt2": {rt: _ALL for rt in ("transformers", "vLLM", "llama.cpp", "MLX-LM", "TGI", "SGLang", "ExLlamaV2")},
    "gpt_neox": {"transformers": _ALL, "vLLM": _ALL, "llama.cpp": _g(U, U, U), "MLX-LM": _ALL, "TGI": _ALL,
                 "SGLang": _g(U, U, Y), "ExLlamaV2": _g(U, U, U)},
}
NOTES = {  # (runtime, family, group) -> the sentence a bake prints and the card carries
    ("SGLang", "llama", "mlp"): "SGLang builds Llama's MLP without biases: a resid/mlp bake loads but does nothing",
    ("vLLM", "qwen3", "o"): "vLLM's Qwen3 builds o_proj with bias=False: an attn_out or approximate bake is dropped",
}


def group_of(key: str) -> str:
    """The bias group of a checkpoint key such as ``model.layers.3.self_attn.o_proj.bias``."""
    module = key.rsplit(".", 2)[-2]
    if ".mlp." in key or module in ("mlp", "c_fc", "dense_h_to_4h", "dense_4h_to_h"):
        return "mlp"
    if module in ("o_proj", "dense") or key.endswith("attn.c_proj.bias"):
        return "o"
    return "qkv"


def groups_written(keys: Iterable[str]) -> list[str]:
    found = {group_of(k) for k in keys}
    return [g for g in GROUPS if g in found]


def support(family: str, groups: list[str]) -> dict[str, Support]:
    """Per runtime, the weakest support over the groups written (refused < ignored < unknown < yes)."""
    rank = {"refused": 0, "ignored": 1, "unknown": 2, "yes": 3}
    out = {}
    for rt in RUNTIMES:
        row = TABLE.get(family, {}).get(rt, {})
        out[rt] = min((row.get(g, "unknown") for g in groups), key=rank.__getitem__, default="yes")
    return out


def warnings(family: str, groups: list[str]) -> list[str]:
    """One sentence per runtime that would silently drop or refuse what was written."""
    out = []
    for rt in RUNTIMES:
        row = TABLE.get(family, {}).get(rt, {})
        for verdict, verb in (("ignored", "loads it but ignores"), ("refused", "refuses")):
            hit = [g for g in groups if row.get(g) == verdict]
            noted = [NOTES[(rt, family, g)] for g in hit if (rt, family, g) in NOTES]
            if noted:
                out += noted
            elif hit:
                out.append(f"{rt} {verb} the {'/'.join(hit)} biases of {family} that this bake wrote")
    return out


def for_recipe(recipe: dict) -> tuple[str, list[str]]:
    """(written family, bias groups written) of a bake."""
    from .arch import ARCHS

    w = recipe["written"]
    family = next((a.name for a in ARCHS.values() if w.get("model_type") in a.model_types), "")
    return family, groups_written(recipe["tensors_changed"] + recipe["tensors_added"])


def table_lines(family: str, groups: list[str]) -> list[str]:
    """A Markdown table: runtime, support for what this bake wrote."""
    sup = support(family, groups)
    lines = [f"| runtime | reads the {'/'.join(groups) or 'no'} biases this bake wrote |", "|---|---|"]
    return lines + [f"| {rt} | {sup[rt]} |" for rt in RUNTIMES]
