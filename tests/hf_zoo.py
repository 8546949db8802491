"""Tiny randomly initialised Hugging Face transformers, one per attention family (test helper).

``make(arch, impl)`` builds a model in eval mode from a small config (nothing is downloaded) with
``attn_implementation=impl`` ("sdpa" or "eager") and example inputs, ready for
``torch.export.export(case.model, case.args, case.kwargs, strict=False)``:

* text encoders (bert, roberta, distilbert, t5-encoder): ``input_ids`` (2, 10) and an
  ``attention_mask`` whose second row is right-padded (last 3 positions masked);
* decoders (gpt2, llama): ``input_ids`` (2, 10), ``use_cache=False`` and, with ``pad=True`` (the
  default), an ``attention_mask`` whose second row is left-padded (first 3 positions masked);
  ``pad=False`` leaves the mask out (pure causal attention);
* vision (vit, swin): ``pixel_values`` (2, 3, 32, 32).

Per-model notes: T5 goes through ``T5EncoderModel`` (relative attention bias in layer 0, shared by
the later layers); Swin uses 2x2 patches on a 32x32 image (16x16 then 8x8 tokens, window 4), so the
second block of each stage uses shifted windows with the shift mask; Llama has 4 query heads and 2
key/value heads (GQA) and RoPE.

``HFCase.dynamic_ok`` says whether exporting with ``torch.export.Dim.AUTO`` on the batch and
sequence dims of the inputs (see ``HFCase.dynamic_shapes``) works and gives a graph valid for other
sizes.

Decoders with left padding: the padded query rows of the second sequence attend to no key at all;
"sdpa" (boolean mask) and "eager" (additive finfo.min mask) give different values there, so compare
outputs only where ``attention_mask`` is 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

ARCHS: list[str] = ["bert", "roberta", "distilbert", "vit", "t5-encoder", "swin", "gpt2", "llama"]
IMPLS: tuple[str, ...] = ("sdpa", "eager")

BATCH = 2
SEQ = 10
PAD = 3  # padded positions in the second row of the attention mask
VOCAB = 128
IMAGE = 32

# Export with Dim.AUTO on batch and sequence (``HFCase.dynamic_shapes()``) was probed for every arch
# and impl (torch 2.13, transformers 5.24): all export, and the graphs run correctly at other batch
# sizes / sequence lengths (Swin and ViT: batch only, the image size stays static).
_DYNAMIC_OK = {arch: True for arch in ARCHS}


@dataclass
class HFCase:
    arch: str
    impl: str
    model: nn.Module
    args: tuple
    kwargs: dict[str, Any]
    n_attention_layers: int
    dynamic_ok: bool
    # per input name -> {dim index: meaning} for the dims that may vary ("batch" / "seq" / "image")
    dynamic_dims: dict[str, dict[int, str]] = field(default_factory=dict)

    def dynamic_shapes(self, dim: Any = None) -> dict[str, Any]:
        """A ``dynamic_shapes`` spec for ``torch.export.export`` (kwargs form) marking the batch and
        sequence dims of every tensor input with ``dim`` (default ``torch.export.Dim.AUTO``);
        image height/width stay static."""
        dim = torch.export.Dim.AUTO if dim is None else dim
        names = list(self.kwargs)
        spec: dict[str, Any] = {}
        for name in names:
            v = self.kwargs[name]
            if isinstance(v, torch.Tensor):
                dims = self.dynamic_dims.get(name, {})
                spec[name] = {i: dim for i, what in dims.items() if what in ("batch", "seq")} or None
            else:
                spec[name] = None
        return spec


def _text_inputs(decoder: bool, pad: bool, low: int = 2) -> dict[str, torch.Tensor]:
    ids = torch.randint(low, VOCAB, (BATCH, SEQ))
    out = {"input_ids": ids}
    if pad:
        mask = torch.ones(BATCH, SEQ, dtype=torch.long)
        if decoder:
            mask[1, :PAD] = 0  # left padding
        else:
            mask[1, SEQ - PAD :] = 0  # right padding
        out["attention_mask"] = mask
    return out


def _build(arch: str, impl: str, pad: bool) -> tuple[nn.Module, dict[str, Any], int]:
    import transformers as tf

    common = dict(attn_implementation=impl)
    if arch == "bert":
        cfg = tf.BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            **common,
        )
        return tf.BertModel(cfg, add_pooling_layer=False), _text_inputs(False, pad), 2
    if arch == "roberta":
        cfg = tf.RobertaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            pad_token_id=1,
            **common,
        )
        # ids >= 2 so that no real token is the pad token (RoBERTa derives position ids from it)
        return tf.RobertaModel(cfg, add_pooling_layer=False), _text_inputs(False, pad), 2
    if arch == "distilbert":
        cfg = tf.DistilBertConfig(
            vocab_size=VOCAB,
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=64,
            max_position_embeddings=64,
            **common,
        )
        return tf.DistilBertModel(cfg), _text_inputs(False, pad), 2
    if arch == "vit":
        cfg = tf.ViTConfig(
            image_size=IMAGE,
            patch_size=8,
            num_channels=3,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            **common,
        )
        model = tf.ViTModel(cfg, add_pooling_layer=False)
        return model, {"pixel_values": torch.randn(BATCH, 3, IMAGE, IMAGE)}, 2
    if arch == "t5-encoder":
        cfg = tf.T5Config(
            vocab_size=VOCAB,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            feed_forward_proj="relu",
            is_encoder_decoder=False,
            use_cache=False,
            **common,
        )
        return tf.T5EncoderModel(cfg), _text_inputs(False, pad), 2
    if arch == "swin":
        cfg = tf.SwinConfig(
            image_size=IMAGE,
            patch_size=2,
            num_channels=3,
            embed_dim=32,
            depths=[2, 2],
            num_heads=[2, 4],
            window_size=4,
            mlp_ratio=2.0,
            **common,
        )
        model = tf.SwinModel(cfg, add_pooling_layer=False)
        return model, {"pixel_values": torch.randn(BATCH, 3, IMAGE, IMAGE)}, sum(cfg.depths)
    if arch == "gpt2":
        cfg = tf.GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=64,
            use_cache=False,
            bos_token_id=0,
            eos_token_id=0,
            **common,
        )
        inputs = _text_inputs(True, pad)
        inputs["use_cache"] = False
        return tf.GPT2Model(cfg), inputs, 2
    if arch == "llama":
        cfg = tf.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            use_cache=False,
            **common,
        )
        inputs = _text_inputs(True, pad)
        inputs["use_cache"] = False
        return tf.LlamaModel(cfg), inputs, 2
    raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")


def make(arch: str, impl: str, seed: int = 0, *, pad: bool = True) -> HFCase:
    """Build ``arch`` with ``attn_implementation=impl`` ("sdpa" | "eager"), random weights seeded by
    ``seed`` (global RNG state is left untouched), in eval mode, with example inputs.

    ``pad`` (text models only): include an ``attention_mask`` with padded positions; with
    ``pad=False`` no mask is passed at all."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, kwargs, n_attn = _build(arch, impl, pad)
    model.eval()
    dims: dict[str, dict[int, str]] = {}
    for name, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            dims[name] = {0: "batch", 1: "seq"} if v.dim() == 2 else {0: "batch", 2: "image", 3: "image"}
    return HFCase(
        arch=arch,
        impl=impl,
        model=model,
        args=(),
        kwargs=kwargs,
        n_attention_layers=n_attn,
        dynamic_ok=_DYNAMIC_OK[arch],
        dynamic_dims=dims,
    )
