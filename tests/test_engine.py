"""The block-streaming engine equals transformers' own forward, steered or not, one block resident."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny import CONFIGS, HIDDEN, LAYERS, make_model

from bakesteer.engine import Model, Stream, batches
from bakesteer.hooks import Steer, steering

SEQS = [[5, 9, 2, 33, 7, 1, 60, 12, 3, 44, 8], [17, 4, 90, 2, 6], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]]


def _plain(model, seqs, steers=()):
    out = []
    with torch.no_grad(), steering(model, list(steers)):
        for b in batches(seqs, 8):
            out.append(model(input_ids=b.ids, attention_mask=b.mask).logits)
    return out


def _masked_max(a, b, mask) -> float:
    return float(((a - b).abs().amax(-1) * mask).max())


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_streamed_logits_equal_the_plain_forward(tmp_path, family):
    model = make_model(family)
    model.save_pretrained(tmp_path / "m", max_shard_size="60KB")  # several shards, as a real checkpoint
    eng = Model(tmp_path / "m", torch.float32, "cpu", attn_implementation="eager")
    v = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(1)).numpy()
    steer = [Steer("attn_in", 1, v, 3.0), Steer("attn_out", 2, v, 2.0)]
    want, want_steered = _plain(model, SEQS), _plain(model, SEQS, steer)
    got, got_steered = eng.forward([Stream(batches(SEQS, 8)), Stream(batches(SEQS, 8), steer)])
    mask = batches(SEQS, 8)[0].mask
    assert _masked_max(got[0], want[0], mask) <= 1e-5
    assert _masked_max(got_steered[0], want_steered[0], mask) <= 1e-5
    assert _masked_max(want_steered[0], want[0], mask) > 0.1  # the steer moved the output far beyond 1e-5
    assert eng.peak_blocks == 1 and not eng.resident


def test_one_block_resident_and_parameters_on_meta_between_blocks(tmp_path):
    make_model("llama").save_pretrained(tmp_path / "m")
    eng = Model(tmp_path / "m")
    seen = []
    cap = {("resid", i): (lambda k, h, i=i: seen.append((i, sum(p.device.type != "meta"
                                                                 for p in eng.layers.parameters()))))
           for i in range(LAYERS)}
    eng.forward([Stream(batches(SEQS, 2), captures=cap)], logits=False)
    n_block = sum(1 for _ in eng.layers[0].parameters())
    assert [i for i, _ in seen] == [i for i in range(LAYERS) for _ in range(2)]  # block by block, every batch
    assert all(n == n_block for _, n in seen)  # exactly one block's parameters are real while it runs
    assert all(p.device.type == "meta" for p in eng.model.parameters())  # nothing stays resident after
    assert eng.peak_blocks == 1


def test_captures_equal_hook_captures(tmp_path):
    from bakesteer.hooks import site_at, watch

    model = make_model("qwen3")
    model.save_pretrained(tmp_path / "m")
    eng = Model(tmp_path / "m", attn_implementation="eager")
    want, got = [], []
    h = watch(*site_at(model, "mlp_in", 2), lambda x: want.append(x.clone()))
    with torch.no_grad():
        model(input_ids=torch.tensor([SEQS[0]]))
    h.remove()
    eng.forward([Stream(batches([SEQS[0]], 1), captures={("mlp_in", 2): lambda k, x: got.append(x.clone())})],
                logits=False)
    assert np.allclose(got[0].numpy(), want[0].numpy(), atol=1e-5)


def test_tied_embeddings_and_bf16(tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = CONFIGS["llama"]()
    cfg.tie_word_embeddings, cfg.initializer_range = True, 0.2
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    model.save_pretrained(tmp_path / "m")
    assert "lm_head.weight" not in __import__("safetensors").safe_open(tmp_path / "m" / "model.safetensors",
                                                                      "pt").keys()
    got = Model(tmp_path / "m", attn_implementation="eager").forward([Stream(batches(SEQS, 8))])[0][0]
    mask = batches(SEQS, 8)[0].mask
    assert _masked_max(got, _plain(model, SEQS)[0], mask) <= 1e-5
    low = Model(tmp_path / "m", torch.bfloat16, attn_implementation="eager").forward([Stream(batches(SEQS, 8))])[0][0]
    with torch.no_grad():
        low_model = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.bfloat16,
                                                         attn_implementation="eager").eval()
        want = low_model(input_ids=batches(SEQS, 8)[0].ids, attention_mask=mask).logits
    assert low.dtype == torch.bfloat16 and _masked_max(low.float(), want.float(), mask) == 0.0


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "gpt_neox"])
def test_streamed_greedy_equals_generate(tmp_path, family):
    from bakesteer.lm import greedy, prompts_stream

    model = make_model(family)
    model.save_pretrained(tmp_path / "m")
    eng = Model(tmp_path / "m", attn_implementation="eager")
    v = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(1)).numpy()
    steer = [Steer("resid", 1, v, 4.0)]
    want = []
    for st in ([], steer):
        with steering(model, st), torch.no_grad():
            for s in SEQS[:2]:
                x = torch.tensor([s])
                g = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, min_new_tokens=12,
                                   do_sample=False, pad_token_id=0)
                want.append(g[0, len(s):].tolist())
    got = greedy(eng, [prompts_stream(SEQS[:2]), prompts_stream(SEQS[:2], steer)], 12)
    assert got[0] + got[1] == want
    assert want[:2] != want[2:]  # the steer changed the tokens
    assert eng.peak_blocks == 1


def test_streamed_extract_equals_extract_in_memory(tmp_path):
    from bakesteer.extract import Pair, extract

    from tiny import save_char_tokenizer
    model = make_model("gemma2")  # sliding-window layers, scaled embeddings
    model.save_pretrained(tmp_path / "m")
    save_char_tokenizer(tmp_path / "m")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    pairs = [Pair("I love it", "I hate it"), Pair("kind words, said twice", "cruel words")]
    eng = Model(tmp_path / "m", attn_implementation="eager")
    loaded, real = [], eng.part
    eng.part = lambda which: (loaded.append(which), real(which))[1]
    a = extract(eng, tok, pairs, "mlp_in", [1, 2], aggregation="mean", batch_size=3)
    b = extract(model, tok, pairs, "mlp_in", [1, 2], aggregation="mean", batch_size=3)
    for L in (1, 2):
        assert np.abs(a.vectors[L] - b.vectors[L]).max() <= 1e-5 * max(1.0, np.abs(b.vectors[L]).max())
    assert eng.peak_blocks == 1 and loaded == ["embed", 0, 1, 2]  # blocks 0 to the deepest requested, no head


def test_a_kept_model_reads_each_part_once_and_decodes_the_same(tmp_path, monkeypatch):
    from bakesteer.engine import fits_in_memory
    from bakesteer.lm import greedy, prompts_stream

    model = make_model("llama")
    model.save_pretrained(tmp_path / "m")
    assert fits_in_memory(tmp_path / "m")
    v = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(1)).numpy()
    steer = [Steer("resid", 1, v, 4.0)]
    streamed = greedy(Model(tmp_path / "m", attn_implementation="eager"),
                      [prompts_stream(SEQS[:2]), prompts_stream(SEQS[:2], steer)], 12)
    kept = Model(tmp_path / "m", attn_implementation="eager", keep=True)
    reads: list[str] = []
    real = Model._read
    monkeypatch.setattr(Model, "_read", lambda self, key: reads.append(key) or real(self, key))
    assert greedy(kept, [prompts_stream(SEQS[:2]), prompts_stream(SEQS[:2], steer)], 12) == streamed
    assert streamed[0] != streamed[1]  # the steer changed the tokens
    assert len(reads) == len(set(reads)) == len(kept.ckpt.tensors)  # 12 decoding passes, every tensor read once
    assert kept.peak_blocks == LAYERS
