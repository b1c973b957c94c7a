"""for_every_reader: the old-form keys beside transformers 5's, and transformers 5 reads both alike."""
from __future__ import annotations

import pytest
from transformers import Gemma3TextConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, Phi3Config

from bakesteer.configs import for_every_reader

LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@pytest.mark.parametrize("cls,kwargs", [
    (LlamaConfig, {"rope_parameters": {"rope_type": "default", "rope_theta": 123456.0}}),
    (LlamaConfig, {"rope_parameters": dict(LLAMA3), "max_position_embeddings": 131072}),
    (Gemma3TextConfig, {}),
    (Phi3Config, {"partial_rotary_factor": 0.75}),
    (GPT2Config, {"n_positions": 77}),
    (GPTNeoXConfig, {"rotary_pct": 0.25}),
])
def test_transformers_reads_both_forms_alike(cls, kwargs):
    new = cls(**kwargs).to_dict()
    both = for_every_reader(new)
    added = set(both) - set(new)  # an old key transformers 5 does not know stays a plain attribute: left out
    read = {k: v for k, v in cls.from_dict(both).to_dict().items() if k not in added or k in new}
    assert read == cls.from_dict(new).to_dict()
    assert all(both[k] == v for k, v in new.items())  # nothing of the new form changed


def test_old_keys_written():
    flat = for_every_reader({"rope_parameters": {"rope_type": "default", "rope_theta": 1e5}, "dtype": "bfloat16"})
    assert flat["rope_theta"] == 1e5 and "rope_scaling" not in flat and flat["torch_dtype"] == "bfloat16"
    scaled = for_every_reader({"rope_parameters": dict(LLAMA3)})
    assert scaled["rope_theta"] == 5e5
    assert scaled["rope_scaling"] == LLAMA3
    gemma = for_every_reader(Gemma3TextConfig().to_dict())
    assert (gemma["rope_theta"], gemma["rope_local_base_freq"]) == (1e6, 1e4)
    wrapped = for_every_reader({"text_config": {"rope_parameters": {"rope_type": "default", "rope_theta": 7.0}}})
    assert wrapped["text_config"]["rope_theta"] == 7.0
    kept = for_every_reader({"rope_theta": 1.0, "rope_parameters": {"rope_type": "default", "rope_theta": 2.0}})
    assert kept["rope_theta"] == 1.0  # an existing key is never overwritten


def test_older_key_names_of_a_family_written():
    """The table's ``legacy`` keys: GPT-2's n_ctx, GPT-NeoX's rotary_pct and rotary_emb_base (never overwritten)."""
    assert for_every_reader(GPT2Config(n_positions=77).to_dict())["n_ctx"] == 77
    neox = for_every_reader(GPTNeoXConfig(rotary_pct=0.25, rope_theta=321.0).to_dict())
    assert (neox["rotary_pct"], neox["rotary_emb_base"]) == (0.25, 321.0)
    assert for_every_reader({**GPT2Config().to_dict(), "n_ctx": 5})["n_ctx"] == 5
    assert "n_ctx" not in for_every_reader(LlamaConfig().to_dict())
