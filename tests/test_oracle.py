"""Every family × exact site, baked, equals steering by a hand-written hook (tests/oracle.py) that does not
read bakesteer's table; and a table entry that is wrong in the fold and the table's hook alike is caught."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

from bakesteer.arch import ARCHS, exact_sites, variant
from bakesteer.bake import Item, bake
from bakesteer.hooks import Steer, steering
from oracle import SITES, steered
from tiny import CONFIGS, HIDDEN, VOCAB, save_model, steerable

TOL = 1e-4
CASES = [(name, site) for name in CONFIGS for site in SITES[name]]
IDS = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(2))


@torch.inference_mode()
def _logits(model) -> torch.Tensor:
    return model(IDS).logits.double()


def _vectors(layers=(1, 3)) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {layer: torch.randn(HIDDEN, generator=g, dtype=torch.float64) for layer in layers}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle")
    return root, {name: save_model(name, root / name).eval() for name in CONFIGS}


def test_the_oracle_and_the_table_name_the_same_exact_sites():
    assert {n: sorted(SITES[n]) for n in CONFIGS} == {n: sorted(exact_sites(CONFIGS[n]().to_dict())) for n in CONFIGS}


def _bake_and_compare(root, source, name: str, site: str, tag: str, coef: float = 4.0) -> tuple[float, float]:
    vecs = _vectors(steerable(CONFIGS[name]().to_dict(), site, (1, 3)))
    bake(root / name, [Item(Steer(site, L, v, coef), {}) for L, v in vecs.items()], root / tag, progress=False)
    baked = AutoModelForCausalLM.from_pretrained(root / tag, dtype=torch.float32, attn_implementation="eager").eval()
    with steered(source, name, site, vecs, coef):
        hooked = _logits(source)
    return float((_logits(baked) - hooked).abs().max()), float((hooked - _logits(source)).abs().max())


@pytest.mark.parametrize("name,site", CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_bake_equals_the_hand_written_hook(sources, name, site):
    root, models = sources
    diff, effect = _bake_and_compare(root, models[name], name, site, f"{name}-{site}")
    assert diff <= TOL, f"baked vs oracle max |Δ| = {diff}"
    assert effect >= 100 * TOL, f"the steer moved the logits by only {effect}"


def test_a_wrong_entry_that_the_table_hook_agrees_with_is_caught(sources):
    """Llama's mlp_in written as a copy of attn_in (hook input_layernorm, fold q/k/v): the table's own hook
    and the fold agree, so baked == table-hooked; the hand-written hook puts mlp_in after
    post_attention_layernorm, and the bake is far from it."""
    root, models = sources
    llama = ARCHS["llama"]
    wrong = dataclasses.replace(llama, sites={**llama.sites, "mlp_in": llama.sites["attn_in"]})
    with variant(wrong):
        diff, effect = _bake_and_compare(root, models["llama"], "llama", "mlp_in", "wrong-mlp_in")
        vecs = _vectors()
        baked = AutoModelForCausalLM.from_pretrained(root / "wrong-mlp_in", dtype=torch.float32).eval()
        with steering(models["llama"], [Steer("mlp_in", L, v, 4.0) for L, v in vecs.items()]):
            table_hooked = _logits(models["llama"])
    assert float((_logits(baked) - table_hooked).abs().max()) <= TOL  # invisible to the table's own hook
    assert diff >= 100 * TOL and effect >= 100 * TOL  # caught by the oracle
