"""The model card (README.md) a bake writes: what was baked, exactly or how closely, and how to load it."""
from __future__ import annotations

from .report import approx_lines

RUNTIMES = {  # which runtimes read the bias tensors a bake may write (see the README's portability notes)
    "mlp_bias": "transformers, vLLM, llama.cpp, MLX-LM and TGI read mlp_bias; SGLang ignores it",
    "attention_bias": "transformers, vLLM, llama.cpp, MLX-LM, SGLang and TGI read attention_bias",
}


def _yaml_list(items: list[str]) -> str:
    return "".join(f"\n- {i}" for i in items)


def render(recipe: dict) -> str:
    """Markdown with YAML front matter, from a bake's ``bakesteer.json``."""
    src, w = recipe["source"], recipe["written"]
    base = src.get("hub_id") or src.get("default_model")
    front = ["---", "library_name: transformers", f"tags:{_yaml_list(['bakesteer', 'steering', 'activation-steering'])}"]
    if base:
        front.append(f"base_model: {base}")
    front.append("---")
    exact = recipe.get("exact", True)
    title = f"# {base or 'model'} with baked steering" + ("" if exact else " (APPROXIMATE)")
    lines = [*front, "", title, ""]
    if not exact:
        lines += ["> **Approximate bake.** This architecture has no bias slot where the vector acts, so bakesteer "
                  "fitted the nearest slots to the hook-steered model. Measured on held-out text:", ">"]
        lines += [f"> {line.strip()}" for line in approx_lines(recipe["approximation"])]
        lines += [""]
    else:
        lines += ["The steering below is folded into bias tensors: this checkpoint's outputs equal hook-based "
                  "steering of the base model up to float rounding (`bakesteer verify` checks it).", ""]
    lines += ["| site | decoder block (0-based) | coefficient | vector norm | from |", "|---|---|---|---|---|"]
    for s in recipe["steers"]:
        origin = f"{s['format']} layer {s['file_layer']}" if "format" in s else "(library call)"
        lines.append(f"| {s['site']} | {s['layer']} | {s['coef']:g} | {s['norm']:.4g} | {origin} |")
    lines += ["", f"Written as `{(w.get('architectures') or ['?'])[0]}`"
              + (f" (relabelled from {w['relabelled_from']}, exactly equivalent)" if w["relabelled_from"] else "")
              + (f" with {', '.join(w['flags_switched_on'])} switched on" if w["flags_switched_on"] else "") + "."]
    for flag in w["flags_switched_on"]:
        if flag in RUNTIMES:
            lines.append(f"Runtimes: {RUNTIMES[flag]}.")
    lines += ["", "It loads with no custom code:", "", "```python",
              "from transformers import AutoModelForCausalLM", 'model = AutoModelForCausalLM.from_pretrained("<this folder or repo>")',
              "```", "", "`bakesteer.json` records the recipe; `bakesteer unbake` restores the original weights bit for "
              "bit.", ""]
    return "\n".join(lines)
