"""Plain-text lines that describe a bake's record (shared by the CLI, verify and the model card)."""
from __future__ import annotations


def approx_lines(a: dict) -> list[str]:
    """What an approximate bake fitted and how close it is, from ``recipe["approximation"]``."""
    h = a["heldout"]
    closed = a["closed_form"]
    return [
        f"  APPROXIMATE (no exact bias slot): {a['chosen'].replace('_', ' ')} result kept, slots "
        f"{', '.join(a['slots'])}",
        f"  on {h['tokens']} held-out tokens: KL(hooked ‖ baked) = {h['kl_hooked_baked']:.4g} nats/token = "
        f"{h['ratio']:.1%} of the steering's KL(source ‖ hooked) = {h['kl_source_hooked']:.4g}; "
        f"top-1 agreement with hooked {h['top1_agreement']:.1%}",
        f"  closed form alone: {closed['ratio']:.1%} of the steering's KL, top-1 {closed['top1_agreement']:.1%}; "
        f"fit: {a['steps']} steps on {a['fit_tokens']} tokens in {a['fit_seconds']:.1f} s",
    ]
