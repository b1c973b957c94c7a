"""The architecture table agrees with transformers' own modeling code and config classes."""
from __future__ import annotations

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from bakesteer.arch import ALWAYS, ARCHS, NEVER, SITES
from bakesteer.tiny import CONFIGS


@pytest.mark.parametrize("name", list(ARCHS))
def test_defaults_and_dims_match_transformers(name):
    arch = ARCHS[name]
    full = AutoConfig.for_model(arch.model_types[0]).to_dict()
    for key, value in arch.defaults.items():
        assert full.get(key) == value, (key, value, full.get(key))
    for key in arch.dims:
        assert key in full


@pytest.mark.parametrize("tiny", list(CONFIGS))
def test_every_module_and_bias_slot_exists_as_the_table_says(tiny):
    """Build the model with every flag on: ALWAYS/flag slots have a bias, NEVER slots have none."""
    cfg = CONFIGS[tiny]()
    arch = next(a for a in ARCHS.values() if cfg.model_type in a.model_types)
    for slot in set(arch.linears.values()) - {ALWAYS, NEVER}:
        setattr(cfg, slot, True)
    model = AutoModelForCausalLM.from_config(cfg)
    block = model.get_submodule(f"{arch.layers}.0")
    for module, slot in arch.linears.items():
        has_bias = block.get_submodule(module).bias is not None
        assert has_bias == (slot != NEVER), (module, slot)
    for site in SITES:
        hook = arch.sites[site].hook
        assert hook == "" or block.get_submodule(hook) is not None
