"""Tiny random Hugging Face causal LMs of several families, for generation tests (no downloads)."""

from __future__ import annotations

import torch

VOCAB = 96
COMMON = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=128, eos_token_id=None, bos_token_id=None, pad_token_id=0,
)  # fmt: skip

# family -> (config class, model class, config kwargs): GQA, MQA, sliding windows (Mistral's one
# window; Gemma 3's per-layer types), learned absolute positions (GPT-2, OPT), fused projections
# (Phi-3, GPT-NeoX, Falcon), partial rotary (GPT-NeoX, StableLM), parallel blocks (GPT-NeoX, Falcon)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(num_key_value_heads=2, sliding_window=8)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(num_key_value_heads=2)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(num_key_value_heads=1, head_dim=16, sliding_window=8)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(ffn_dim=128, word_embed_proj_dim=64)),
    # partial rotary embeddings (half of each head), fused q/k/v, parallel attention and MLP
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(rotary_pct=0.5)),
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(new_decoder_architecture=True, num_kv_heads=2)),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", dict(num_key_value_heads=2, partial_rotary_factor=0.5)),
    # mixture of experts (grouped_mm experts; the float64 reference runs them as a loop)
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)),
    # ALiBi folded into the mask, no cache_position: generate() passes the whole sequence each step
    "mpt": ("MptConfig", "MptForCausalLM", dict(d_model=64, n_layers=2, n_heads=4, max_seq_len=128)),
}


def make(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random model of ``family`` (``overrides``: config fields on top of the family's)."""
    import transformers as tf

    cfg_name, model_name, extra = FAMILIES[family]
    kwargs = dict(COMMON)
    if family in ("gpt2", "mpt"):
        kwargs = {k: v for k, v in kwargs.items() if k in ("vocab_size", "eos_token_id", "bos_token_id", "pad_token_id")}
    if family == "opt":
        kwargs = {k: v for k, v in kwargs.items() if k != "intermediate_size"}
    config = getattr(tf, cfg_name)(**{**kwargs, **extra, **overrides})
    torch.manual_seed(seed)
    return getattr(tf, model_name)(config).eval()


def llama_spec():
    """``tests.generation.decoders:llama_spec``, a model spec for the command line: the tiny Llama
    of :func:`make` and example token ids."""
    ids = torch.randint(1, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    return make("llama"), {"input_ids": ids}
