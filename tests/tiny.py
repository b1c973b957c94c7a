"""Test fixtures: tiny random-weight models of every supported family, built from a config (no download),
and table variants that tests put in play with ``bakesteer.arch.variant`` (the table itself never changes)."""
from __future__ import annotations

import dataclasses

import torch
from transformers import AutoModelForCausalLM

from bakesteer.arch import APPROX_PRE_NORM, ARCHS, NEVER, Arch, variant
from transformers import (CohereConfig, Cohere2Config, DeepseekV3Config, GemmaConfig, Gemma2Config, Gemma3Config,
                          Gemma3TextConfig, Glm4Config, GPT2Config, GPTJConfig, GPTNeoXConfig, GptOssConfig,
                          GraniteConfig, GraniteMoeConfig, GraniteSWAConfig, Llama4Config, Llama4TextConfig,
                          LlamaConfig, LlavaConfig,
                          Ministral3Config, Mistral3Config,
                          MistralConfig, Olmo2Config, Olmo3Config, OlmoeConfig, OPTConfig, Phi3Config, PhiConfig,
                          Qwen2_5_VLConfig,
                          Qwen2Config, Qwen2MoeConfig, Qwen2VLConfig, Qwen3Config, Qwen3MoeConfig, SeedOssConfig,
                          SmolLM3Config, Starcoder2Config)

VOCAB, HIDDEN, LAYERS = 96, 64, 4
_COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
               num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256, tie_word_embeddings=False)
# long-rope as Phi-3-mini-128k: short factors up to original_max_position_embeddings, long ones past it (the
# shared tests stay below it, as prompts below 4096 tokens do on the released models; test_phi3 goes past)
PHI3_LONGROPE = dict(rope_type="longrope", rope_theta=10000.0, original_max_position_embeddings=128,
                     short_factor=[1.0 + 0.1 * i for i in range(8)], long_factor=[2.0 + 0.3 * i for i in range(8)])
MINISTRAL3_ROPE = dict(rope_type="yarn", rope_theta=1e6, factor=2.0, original_max_position_embeddings=128,
                       beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0, llama_4_scaling_beta=0.1)
CONFIGS = {
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=256),
    "gpt_neox": lambda: GPTNeoXConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                      num_attention_heads=4, intermediate_size=128, max_position_embeddings=256,
                                      use_parallel_residual=True, rotary_pct=0.5, tie_word_embeddings=False),
    "gpt_neox_seq": lambda: GPTNeoXConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                          num_attention_heads=4, intermediate_size=128, max_position_embeddings=256,
                                          use_parallel_residual=False, attention_bias=False,
                                          tie_word_embeddings=False),
    "llama": lambda: LlamaConfig(**_COMMON),
    "granite": lambda: GraniteConfig(**_COMMON, residual_multiplier=0.22, embedding_multiplier=12.0,
                                     attention_multiplier=0.0078125, logits_scaling=8.0),
    # GraniteSWA: Granite's multipliers, attention sinks, sliding blocks and a NoPE block (RoPE base 0)
    "granite_swa": lambda: GraniteSWAConfig(**_COMMON, residual_multiplier=0.22, embedding_multiplier=12.0,
                                            attention_multiplier=0.0625, logits_scaling=8.0, sliding_window=8,
                                            layer_types=["full_attention", "sliding_attention"] * 2,
                                            layer_rope_theta=[0.0, 10000.0, 10000.0, 10000.0]),
    "mistral": lambda: MistralConfig(**_COMMON, sliding_window=None),
    "mistral_window": lambda: MistralConfig(**_COMMON, sliding_window=8),  # relabelled to SmolLM3
    "qwen2_window": lambda: Qwen2Config(**_COMMON, use_sliding_window=True, sliding_window=8, max_window_layers=2),
    "qwen2": lambda: Qwen2Config(**_COMMON),
    # Ministral 3: Mistral's block, YaRN, queries scaled past original_max_position_embeddings (128 here, beyond
    # the shared tests' sequences; tests/test_equivalence.py goes past it)
    "ministral3": lambda: Ministral3Config(**_COMMON, head_dim=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                           rope_parameters=MINISTRAL3_ROPE),
    "qwen3": lambda: Qwen3Config(**_COMMON, head_dim=16),
    "gemma": lambda: GemmaConfig(**_COMMON, head_dim=16),
    "gemma2": lambda: Gemma2Config(**_COMMON, head_dim=16, sliding_window=8, query_pre_attn_scalar=16),
    "gemma3": lambda: Gemma3TextConfig(**_COMMON, head_dim=16, sliding_window=8, query_pre_attn_scalar=16),
    "olmo2": lambda: Olmo2Config(**_COMMON),
    "olmo3": lambda: Olmo3Config(**_COMMON, sliding_window=8),
    # mixtures of experts in every block (as released): 4 experts, 2 per token
    "qwen3_moe": lambda: Qwen3MoeConfig(**_COMMON, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                        moe_intermediate_size=32, norm_topk_prob=True),
    # GPT-OSS: biases on every expert and the router, attention sinks, sliding and full blocks alternating, YaRN
    "gpt_oss": lambda: GptOssConfig(**{**_COMMON, "max_position_embeddings": 131072, "intermediate_size": 64},
                                    head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                                    sliding_window=8),
    # OLMoE: q/k norms, routing weights that do not sum to 1 (norm_topk_prob off, as released)
    "olmoe": lambda: OlmoeConfig(**{**_COMMON, "intermediate_size": 32}, num_experts=4, num_experts_per_tok=2,
                                 pad_token_id=0, bos_token_id=1, eos_token_id=2),
    # GLM4: sandwich norms, half-rotary interleaved RoPE, native q/k/v biases
    "glm4": lambda: Glm4Config(**_COMMON, head_dim=16, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    # DeepSeek-V3: latent attention with a low-rank query, one dense block then routed + shared experts
    "deepseek_v3": lambda: DeepseekV3Config(**{**_COMMON, "num_key_value_heads": 4}, moe_intermediate_size=32,
                                            n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
                                            first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=16,
                                            qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
                                            n_shared_experts=1, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "qwen2_moe": lambda: Qwen2MoeConfig(**_COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                        shared_expert_intermediate_size=48),
    # SmolLM3: every 4th block without RoPE (its default pattern), a sliding window on two blocks; its default
    # token ids are past a tiny vocabulary
    "smollm3": lambda: SmolLM3Config(**_COMMON, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                     use_sliding_window=True, sliding_window=8,
                                     layer_types=["sliding_attention", "full_attention"] * 2),
    "starcoder2": lambda: Starcoder2Config(**_COMMON, bos_token_id=1, eos_token_id=2),
    # Seed-OSS: Llama's block, q/k/v biases (attention_bias, on as released), the o bias under attention_out_bias
    "seed_oss": lambda: SeedOssConfig(**_COMMON, head_dim=16, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "phi": lambda: PhiConfig(**_COMMON),
    # Phi-3: fused q|k|v and gate|up, no biases (relabelled to Llama with the fused weights split); the window
    # variant (all blocks sliding, as Phi-3-mini-4k) is relabelled to SmolLM3, the long-rope one to Llama
    "phi3": lambda: Phi3Config(**_COMMON, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "phi3_window": lambda: Phi3Config(**_COMMON, pad_token_id=0, bos_token_id=1, eos_token_id=2, sliding_window=8),
    "phi3_longrope": lambda: Phi3Config(**_COMMON, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                        original_max_position_embeddings=128, rope_parameters=PHI3_LONGROPE),
    "opt": lambda: OPTConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                             ffn_dim=128, max_position_embeddings=256, word_embed_proj_dim=HIDDEN,
                             tie_word_embeddings=False),
    # OPT-350m's form: post-norm blocks, no final norm, embeddings projected in and out (512 <-> 1024 there)
    "opt_post_norm": lambda: OPTConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                       num_attention_heads=4, ffn_dim=128, max_position_embeddings=256,
                                       word_embed_proj_dim=HIDDEN // 2, do_layer_norm_before=False,
                                       tie_word_embeddings=False),
    # GraniteMoE: Granite's multipliers around a top-k softmax mixture of experts
    "granitemoe": lambda: GraniteMoeConfig(**_COMMON, residual_multiplier=0.22, embedding_multiplier=12.0,
                                           attention_multiplier=0.0078125, logits_scaling=8.0, num_local_experts=4,
                                           num_experts_per_tok=2),
    # Llama 4 text: MoE blocks (router, experts, shared expert) interleaved with dense ones, a NoPE block, q/k norms
    "llama4_text": lambda: Llama4TextConfig(**_COMMON, head_dim=16, intermediate_size_mlp=128, num_local_experts=4,
                                            num_experts_per_tok=1, interleave_moe_layer_step=2,
                                            attention_chunk_size=128, pad_token_id=0, bos_token_id=1,
                                            eos_token_id=2),
    "gptj": lambda: GPTJConfig(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, rotary_dim=8,
                               n_positions=256, tie_word_embeddings=False),
    "cohere": lambda: CohereConfig(**_COMMON, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    # Cohere2: sliding blocks with RoPE, every 4th block full attention without it (the released pattern)
    "cohere2": lambda: Cohere2Config(**_COMMON, pad_token_id=0, bos_token_id=1, eos_token_id=2, sliding_window=8,
                                     layer_types=["sliding_attention"] * 3 + ["full_attention"]),
}


_TEXT = {k: v for k, v in _COMMON.items() if k != "tie_word_embeddings"}
_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
               patch_size=14)
# multimodal wrappers around a text decoder of the table (tiny vision towers; no image is ever fed)
WRAPPED = {
    "gemma3_mm": lambda: Gemma3Config(text_config=dict(_TEXT, head_dim=16, sliding_window=8,
                                                       query_pre_attn_scalar=16),
                                      vision_config=dict(_VISION, model_type="siglip_vision_model"),
                                      mm_tokens_per_image=4),
    "llava": lambda: LlavaConfig(text_config=dict(_TEXT, model_type="llama"),
                                 vision_config=dict(_VISION, model_type="clip_vision_model", projection_dim=16)),
    "mistral3": lambda: Mistral3Config(text_config=dict(_TEXT, model_type="mistral", sliding_window=None),
                                       vision_config=dict(_VISION, model_type="pixtral", head_dim=8)),
    # with a sliding window in play: relabelled to SmolLM3 inside text_config
    # Qwen2.5-VL, Qwen2-VL: a Qwen2 decoder (q/k/v biases) with multimodal RoPE, stored under the older key names
    "qwen2_5_vl": lambda: Qwen2_5_VLConfig(
        text_config=dict(_TEXT, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                 "rope_theta": 10000.0}, bos_token_id=1, eos_token_id=2),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=HIDDEN,
                           patch_size=14, window_size=28, fullatt_block_indexes=[0])),
    "qwen2_vl": lambda: Qwen2VLConfig(
        text_config=dict(_TEXT, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                 "rope_theta": 10000.0}, bos_token_id=1, eos_token_id=2),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=HIDDEN, num_heads=2, mlp_ratio=2, patch_size=14)),
    # Ministral 3 as released: its Ministral 3 decoder inside Mistral 3's wrapper (relabelled to Llama inside)
    "ministral3_mm": lambda: Mistral3Config(text_config=dict(_TEXT, model_type="ministral3", head_dim=16,
                                                             rope_parameters=MINISTRAL3_ROPE),
                                            vision_config=dict(_VISION, model_type="pixtral", head_dim=8)),
    # Llama 4 as released: MoE and dense blocks, a NoPE block, chunked attention, llama3 RoPE scaling (its text
    # decoder at language_model)
    "llama4_mm": lambda: Llama4Config(
        text_config=dict(_TEXT, model_type="llama4_text", head_dim=16, intermediate_size_mlp=128,
                         rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=16.0,
                                              low_freq_factor=1.0, high_freq_factor=1.0,
                                              original_max_position_embeddings=8192),
                         num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=2,
                         attention_chunk_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        vision_config=dict(_VISION, vision_output_dim=16, projector_input_dim=16, projector_output_dim=HIDDEN,
                           pixel_shuffle_ratio=0.5)),
    "mistral3_window": lambda: Mistral3Config(text_config=dict(_TEXT, model_type="mistral", sliding_window=8),
                                              vision_config=dict(_VISION, model_type="pixtral", head_dim=8)),
}


def make_wrapped(name: str, seed: int = 0, init: float = 0.2) -> torch.nn.Module:
    """A random multimodal model of ``WRAPPED``, its existing biases random (as ``make_model``)."""
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    cfg = WRAPPED[name]()
    cfg.get_text_config().initializer_range = init
    model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0, 0.1)
    return model


def steerable(cfg: dict, site: str, blocks: tuple[int, ...]) -> tuple[int, ...]:
    """``blocks``, with the last block swapped for a free one below it where the site folds into the next block
    (post-norm OPT's resid: the last block has no slot)."""
    from bakesteer.arch import find_arch

    if not find_arch(cfg).sites[site].next_block or LAYERS - 1 not in blocks:
        return blocks
    free = max(b for b in range(LAYERS - 1) if b not in blocks)
    return tuple(sorted(set(blocks) - {LAYERS - 1} | {free}))


def make_model(name: str, seed: int = 0, dtype=torch.float32, init: float = 0.2, **config) -> torch.nn.Module:
    """A random model with random existing biases; ``init`` 0.2 (10x the default) so that steering shows.
    ``config``: values that replace the tiny config's (e.g. a real tokenizer's ``vocab_size``)."""
    torch.manual_seed(seed)
    cfg = CONFIGS[name]()
    for key, value in config.items():
        setattr(cfg, key, value)
    cfg.initializer_range = init
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith((".bias", "_bias")):  # "_bias": stacked experts' (GPT-OSS)
                p.normal_(0, 0.1)  # existing biases must be kept, not overwritten
        for n, b in model.named_buffers():
            if n.endswith("e_score_correction_bias"):  # DeepSeek's expert choice: a stored buffer, must be read
                b.normal_(0, 0.1)
    return model.to(dtype)


def save_model(name: str, path, seed: int = 0, dtype=torch.float32) -> torch.nn.Module:
    model = make_model(name, seed, dtype)
    model.save_pretrained(path)
    return model


GPT_OSS_PACKED = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def save_packed_gpt_oss(path, seed: int = 0, **config) -> None:
    """The tiny GPT-OSS as released: experts MXFP4-packed (random blocks and scales), the rest unpacked, and the
    quantization_config the released checkpoints carry."""
    import json

    from safetensors.torch import load_file, save_file

    plain = path.with_name(path.name + "-unpacked")
    make_model("gpt_oss", seed, **config).save_pretrained(plain)
    tensors = load_file(plain / "model.safetensors")
    g = torch.Generator().manual_seed(seed)
    for key in [k for k in tensors if k.endswith(GPT_OSS_PACKED)]:
        n, fan_in, fan_out = tensors.pop(key).shape
        tensors[key + "_blocks"] = torch.randint(0, 256, (n, fan_out, fan_in // 32, 16), generator=g, dtype=torch.uint8)
        tensors[key + "_scales"] = torch.randint(123, 127, (n, fan_out, fan_in // 32), generator=g, dtype=torch.uint8)
    path.mkdir(parents=True)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((plain / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (path / "config.json").write_text(json.dumps(cfg))


def llama_without_mlp_bias() -> Arch:
    """Llama as if its MLP had no bias slot (as on Qwen3): lets a real Llama (SmolLM2) measure approximate
    bakes against its exact hooked steering."""
    real = ARCHS["llama"]
    return dataclasses.replace(real, linears={**real.linears, **{m: NEVER for m in real.linears
                                                                 if m.startswith("mlp.")}}, approx=APPROX_PRE_NORM)


def pretend_no_mlp_bias():
    """Within the block, ``llama_without_mlp_bias`` answers for Llama."""
    return variant(llama_without_mlp_bias())


def save_char_tokenizer(path) -> None:
    """A character-level tokenizer over printable ASCII (95 symbols + unknown = VOCAB ids) for tiny models."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{chr(c): c - 31 for c in range(32, 127)}}
    assert len(vocab) == VOCAB
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab, [], unk_token="<unk>")),
                                  unk_token="<unk>", pad_token="<unk>")
    tok.save_pretrained(path)
