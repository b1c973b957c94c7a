"""The model card (README.md) a bake writes and `verify` completes: recipe, figures, runtimes, unbake."""
from __future__ import annotations

import re

from .portability import for_recipe, table_lines, warnings
from .report import approx_lines

DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the bundled default model's Hub id
TAGS = ["steering", "activation-steering", "bakesteer"]


# base_model_relation: the Hub documents four values: adapter, merge, quantized and finetune. A bake is a whole
# checkpoint of the same model with bias tensors changed or added: not an adapter (nothing is loaded on top of the
# base), not a merge of several models, not a quantization (the weights keep their dtype; the default SmolLM2's
# dequantization is told in the card's body). An edit of the weights is what the Hub files under finetune.
RELATION = "finetune"


def base_model(recipe: dict) -> str | None:
    """The Hub id of the model this bake was made from, where known: given with --base-model, else the Hub id (or
    Hub-cache snapshot) it was baked from, else the default SmolLM2's. A plain local folder has none."""
    src = recipe["source"]
    if src.get("base_model"):
        return src["base_model"]
    if src.get("hub_id"):
        return src["hub_id"]
    if src.get("default_model"):
        return DEFAULT_HUB_ID
    return None


def with_base_model(recipe: dict, base: str | None) -> dict:
    """The recipe with ``base`` (if given) recorded as its source's base model."""
    return recipe if base is None else {**recipe, "source": {**recipe["source"], "base_model": base}}


def front_matter(recipe: dict) -> str:
    from huggingface_hub import ModelCardData

    base = base_model(recipe)
    data = ModelCardData(base_model=base, library_name="transformers", pipeline_tag="text-generation",
                         tags=TAGS, base_model_relation=RELATION if base else None)
    return f"---\n{data.to_yaml()}\n---\n"


def _source_line(recipe: dict, base: str | None, folder: str) -> str:
    src = recipe["source"]
    if base is None:
        return (f"Source: a local folder (`{folder}`) with no Hub id, so this card names no base model; "
                "`bakesteer push --base-model owner/name` names one.")
    rev = src.get("revision") if base == src.get("hub_id") else None
    return f"Base model: [{base}](https://huggingface.co/{base})" + (f" at revision `{rev}`" if rev else "") + "."


def _strength(s: dict | None) -> list[str]:
    """What the steer does to the model (measured by verify on the source with the steer hooked)."""
    if not s:
        return []
    return [f"Steering strength ({s['verdict']}): KL(source ‖ steered) = {s['kl']:.3g} nats/token on the bundled "
            f"prompts; perplexity of general text {s['ppl_source']:.3g} → {s['ppl_steered']:.3g} "
            f"(×{s['ppl_ratio']:.3g}).", ""]


def _figures(v: dict | None, exact: bool) -> list[str]:
    if v is None:
        return ["Not yet verified here: run `bakesteer verify <this folder>` (it writes its figures into this card).",
                ""]
    if v["kind"] == "approximate":
        return _strength(v.get("strength")) + [
                f"`bakesteer verify` re-measured it on {v['tokens']} held-out tokens: KL(hooked ‖ baked) = "
                f"{v['kl_hooked_baked']:.4g} nats/token ({v['ratio']:.1%} of the steering's KL(source ‖ hooked) = "
                f"{v['kl_source_hooked']:.4g}), top-1 agreement {v['top1_agreement']:.1%} — "
                f"{'PASS (reproduced)' if v['passed'] else 'FAIL'}.", ""]
    lines = _strength(v.get("strength")) + [f"`bakesteer verify` ({v['dtype']}, {len(v['prompts'])} fixed prompts): "
             f"{'PASS' if v['passed'] else 'FAIL'}", "",
             "| max \\|Δlogit\\| baked vs hooked | tolerance | steering effect max \\|hooked − source\\| | "
             "KL(source ‖ hooked) nats/token | greedy tokens |", "|---|---|---|---|---|",
             f"| {v['max_abs_diff']:.3g} | {v['tolerance']:.3g} | {v['steering_effect']:.3g} | "
             f"{v['kl_source_hooked']:.4g} | {v['greedy_tokens']} "
             f"{'identical' if v['greedy_match'] else 'DIFFERENT'} |",
             ""]
    if v.get("sample"):
        s = v["sample"]
        clean = lambda t: re.sub(r"\s+", " ", t).replace("|", "\\|").strip()  # noqa: E731
        lines += ["| prompt | source model (greedy) | this model (greedy) |", "|---|---|---|",
                  f"| {clean(s['prompt'])} | {clean(s['source'])} | {clean(s['baked'])} |", ""]
    return lines


def _origin(steer: dict) -> str:
    """Where a recipe row's vector came from; library callers may give only part of it, or nothing."""
    if "file" not in steer:
        return "(library call)"
    how = ", ".join(x for x in (steer.get("format"), f"its layer {steer['file_layer']}" if "file_layer" in steer
                                else None) if x)
    return f"`{steer['file'].rsplit('/', 1)[-1]}`" + (f" ({how})" if how else "")


def render(recipe: dict, verification: dict | None = None, repo: str | None = None) -> str:
    """Markdown with ModelCardData front matter, from ``bakesteer.json`` (and ``bakesteer/verify.json``).

    ``repo``: the Hub id it is pushed to, for the loading example (else the folder's own name).
    """
    w, exact = recipe["written"], recipe.get("exact", True)
    base = base_model(recipe)
    folder = recipe["source"].get("path", "model").rstrip("/").rsplit("/", 1)[-1]
    lines = [f"# {base or folder} with baked steering" + ("" if exact else " (APPROXIMATE)"), "",
             _source_line(recipe, base, folder), ""]
    if recipe["source"].get("weights"):
        lines += [f"Base weights: {recipe['source']['weights']}.", ""]
    if exact:
        lines += ["Activation steering folded into bias tensors by bakesteer: this checkpoint's outputs equal "
                  "hook-based steering of the base model up to float rounding, with no hooks and no custom code.", ""]
    else:
        lines += ["> **Approximate bake.** This architecture has no bias slot where the vector acts, so bakesteer "
                  "fitted the nearest slots to the hook-steered model. Measured on held-out text:", ">"]
        lines += [f"> {line.strip()}" for line in approx_lines(recipe["approximation"])] + [""]
    lines += ["## Recipe", "", "| site | decoder block (0-based) | coefficient | vector norm | vector file |",
              "|---|---|---|---|---|"]
    for s in recipe["steers"]:
        origin = _origin(s)
        lines.append(f"| {s['site']} | {s['layer']} | {s['coef']:g} | {s['norm']:.4g} | {origin} |")
    lines += ["", f"Convention: {recipe['convention']}. Each row adds coefficient × vector at that site, at every "
              "position.", "",
              f"Written as `{(w.get('architectures') or ['?'])[0]}`"
              + (f" (relabelled from {w['relabelled_from']}, exactly equivalent)" if w["relabelled_from"] else "")
              + (f" with `{'`, `'.join(w['flags_switched_on'])}` switched on" if w["flags_switched_on"] else "")
              + ".", *(["", f"Warning: {w['caveat']}."] if w.get("caveat") else []), "", "## Verification", "",
              *_figures(verification, exact)]
    family, groups = for_recipe(recipe)
    lines += ["## Runtimes", "", *table_lines(family, groups), ""]
    lines += [f"Warning: {x}." for x in warnings(family, groups)]
    lines += ["", "## Use and undo", "", "```python", "from transformers import AutoModelForCausalLM",
              f'model = AutoModelForCausalLM.from_pretrained("{repo or "path/to/this/folder"}")  # no custom code',
              "```", "", "`bakesteer.json` and `bakesteer/` record the recipe and the original biases; "
              "`bakesteer unbake FOLDER -o OUT` (on a local copy) restores the base model's weights bit for bit.", ""]
    return front_matter(recipe) + "\n" + "\n".join(lines)
