"""The model zoo: small self-contained reference transformers and a loader for real weights.

``get(name, seed=0, **overrides)`` builds one entry of :data:`ZOO` and returns a :class:`ZooEntry`:
the model in eval mode (random weights drawn from ``seed``, or the real pretrained weights for
``"minilm"``), example inputs to call it with, and facts about it. ``overrides`` go to the model's
config dataclass (``attn_impl="eager"``, ``depth=4``, ...), except ``batch`` and ``seq`` which size
the example inputs. ``default()`` names the entry tools use when none is given.

Models are plain PyTorch (transformers only inside the MiniLM loader) and export with
``torch.export.export(strict=False)`` with dynamic batch and sequence dims.

=============  ===============================================================================
name           model
=============  ===============================================================================
vit            ViT classifier, 32x32 images, 8x8 patches, pre-LN, SDPA
bert           BERT encoder, post-LN, SDPA with a boolean padding mask
bert-eager     the same BERT with explicit softmax attention and an additive finfo.min mask
gpt-rope       causal decoder, rotary positions, SDPA is_causal
gpt-alibi      causal decoder, ALiBi bias (bias + causal merged into SDPA's attn_mask)
gpt-t5         causal decoder, T5 bucketed relative bias, unscaled attention as in T5
gpt-learned    causal decoder, learned absolute positions (GPT-2 style)
gpt-gqa        Llama-like: RoPE, RMSNorm, SwiGLU, no biases, 4 query heads on 2 kv heads
minilm         the real all-MiniLM-L6-v2 (transformers BertModel), tokenized SENTENCES[:4]
=============  ===============================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from tcomp.models.bert import Bert, BertConfig
from tcomp.models.gpt import GPT, GPTConfig
from tcomp.models.vit import ViT, ViTConfig

# input name -> {dim: "batch" | "seq"}: the dims of each input that may vary between calls
DynamicDims = dict[str, dict[int, str]]
# (batch, seq, seed) -> (args, kwargs): fresh example inputs of another size
InputMaker = Callable[[int, int, int], tuple[tuple, dict]]


@dataclass
class ZooEntry:
    """A zoo model ready to run: ``model(*example_inputs, **example_kwargs)``."""

    model: nn.Module
    example_inputs: tuple
    example_kwargs: dict = field(default_factory=dict)
    description: str = ""
    n_attention_layers: int = 0
    name: str = ""
    # which dims of which inputs are batch/sequence dims (keyed by forward()'s parameter names)
    dynamic_dims: DynamicDims = field(default_factory=dict)
    # make_inputs(batch, seq, seed) -> (args, kwargs); seq is ignored where the model fixes it (ViT)
    make_inputs: InputMaker | None = None

    def __call__(self) -> Any:
        """Run the model on the example inputs without autograd."""
        with torch.no_grad():
            return self.model(*self.example_inputs, **self.example_kwargs)

    def dynamic_shapes(self) -> dict[str, dict[int, Any]]:
        """``dynamic_shapes`` for ``torch.export.export``: ``Dim.AUTO`` on every batch/sequence dim."""
        from torch.export import Dim

        return {name: {d: Dim.AUTO for d in dims} for name, dims in self.dynamic_dims.items()}


def _generator(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + salt)


def _build(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a model with weights drawn from ``seed`` without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    return model.eval()


def _config(cls: type, base: dict[str, Any], overrides: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"unknown {cls.__name__} option(s) {sorted(unknown)}; known: {sorted(names)}")
    return cls(**{**base, **overrides})


def random_ids(batch: int, seq: int, vocab: int, seed: int, low: int = 1) -> Tensor:
    """Random token ids in ``[low, vocab)`` (never the pad id 0), int64 (batch, seq)."""
    return torch.randint(low, vocab, (batch, seq), generator=_generator(seed, 1))


def padding_mask(batch: int, seq: int, seed: int) -> Tensor:
    """(batch, seq) 0/1 int64 mask: row 0 full, other rows a random valid length in [seq/2, seq)."""
    g = _generator(seed, 2)
    lengths = torch.randint(max(1, seq // 2), max(2, seq), (batch,), generator=g).clamp(max=seq)
    lengths[0] = seq
    return (torch.arange(seq)[None, :] < lengths[:, None]).long()


# ---------------------------------------------------------------- builders


def _vit(seed: int = 0, batch: int = 2, seq: int = 0, **overrides: Any) -> ZooEntry:
    cfg = _config(ViTConfig, {}, overrides)

    def make(b: int, s: int = 0, sd: int = 0) -> tuple[tuple, dict]:
        g = _generator(sd, 3)
        return (torch.randn(b, cfg.channels, cfg.image_size, cfg.image_size, generator=g),), {}

    args, kwargs = make(batch, seq, seed)
    return ZooEntry(
        model=_build(lambda: ViT(cfg), seed),
        example_inputs=args,
        example_kwargs=kwargs,
        description=f"ViT classifier ({cfg.image_size}px, patch {cfg.patch_size}, dim {cfg.dim}, "
        f"depth {cfg.depth}, {cfg.heads} heads, pre-LN, attn={cfg.attn_impl})",
        n_attention_layers=cfg.depth,
        name="vit",
        dynamic_dims={"pixels": {0: "batch"}},
        make_inputs=make,
    )


def _bert_builder(name: str, base: dict[str, Any]) -> Callable[..., ZooEntry]:
    def build(seed: int = 0, batch: int = 2, seq: int = 16, **overrides: Any) -> ZooEntry:
        cfg = _config(BertConfig, base, overrides)

        def make(b: int, s: int, sd: int = 0) -> tuple[tuple, dict]:
            mask = padding_mask(b, s, sd)
            ids = random_ids(b, s, cfg.vocab_size, sd) * mask  # padded positions hold the pad id 0
            return (ids,), {"attention_mask": mask}

        args, kwargs = make(batch, seq, seed)
        return ZooEntry(
            model=_build(lambda: Bert(cfg), seed),
            example_inputs=args,
            example_kwargs=kwargs,
            description=f"BERT encoder (dim {cfg.dim}, depth {cfg.depth}, {cfg.heads} heads, post-LN, "
            f"padding mask, attn={cfg.attn_impl})",
            n_attention_layers=cfg.depth,
            name=name,
            dynamic_dims={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
            make_inputs=make,
        )

    return build


def _gpt_builder(name: str, base: dict[str, Any], what: str) -> Callable[..., ZooEntry]:
    def build(seed: int = 0, batch: int = 2, seq: int = 16, **overrides: Any) -> ZooEntry:
        cfg = _config(GPTConfig, base, overrides)

        def make(b: int, s: int, sd: int = 0) -> tuple[tuple, dict]:
            return (random_ids(b, s, cfg.vocab_size, sd),), {}

        args, kwargs = make(batch, seq, seed)
        heads = f"{cfg.heads} heads" + (f" on {cfg.kv_heads} kv heads" if cfg.kv_heads != cfg.heads else "")
        return ZooEntry(
            model=_build(lambda: GPT(cfg), seed),
            example_inputs=args,
            example_kwargs=kwargs,
            description=f"GPT decoder, {what} (dim {cfg.dim}, depth {cfg.depth}, {heads}, {cfg.norm}, "
            f"{cfg.mlp} MLP, attn={cfg.attn_impl})",
            n_attention_layers=cfg.depth,
            name=name,
            dynamic_dims={"input_ids": {0: "batch", 1: "seq"}},
            make_inputs=make,
        )

    return build


def _minilm(seed: int = 0, batch: int = 4, seq: int = 0, attn_impl: str = "sdpa") -> ZooEntry:
    """The real all-MiniLM-L6-v2; ``seed`` only picks which sentences ``make_inputs`` tokenizes."""
    from tcomp.models.minilm import SENTENCES, example_inputs, load

    m = load(attn_impl=attn_impl)

    def make(b: int, s: int = 0, sd: int = 0) -> tuple[tuple, dict]:
        picked = [SENTENCES[(sd + i) % len(SENTENCES)] for i in range(b)]
        inputs = example_inputs(m.tokenizer, picked, max_length=s or None)
        return (inputs["input_ids"],), {"attention_mask": inputs["attention_mask"]}

    args, kwargs = make(batch, seq, 0)
    cfg = m.model.config
    return ZooEntry(
        model=m.encoder,
        example_inputs=args,
        example_kwargs=kwargs,
        description=f"all-MiniLM-L6-v2, pretrained (transformers BertModel, {cfg.num_hidden_layers} layers, "
        f"dim {cfg.hidden_size}, {cfg.num_attention_heads} heads, attn={attn_impl}); returns the last hidden state",
        n_attention_layers=cfg.num_hidden_layers,
        name="minilm",
        dynamic_dims={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}},
        make_inputs=make,
    )


ZOO: dict[str, Callable[..., ZooEntry]] = {
    "vit": _vit,
    "bert": _bert_builder("bert", {}),
    "bert-eager": _bert_builder("bert-eager", {"attn_impl": "eager"}),
    "gpt-rope": _gpt_builder("gpt-rope", {"position": "rope"}, "RoPE"),
    "gpt-alibi": _gpt_builder("gpt-alibi", {"position": "alibi"}, "ALiBi"),
    "gpt-t5": _gpt_builder("gpt-t5", {"position": "t5", "attn_scale": 1.0}, "T5 relative bias, unscaled"),
    "gpt-learned": _gpt_builder("gpt-learned", {"position": "learned"}, "learned positions"),
    "gpt-gqa": _gpt_builder(
        "gpt-gqa",
        {"position": "rope", "n_kv_heads": 2, "norm": "rmsnorm", "mlp": "swiglu", "bias": False},
        "Llama-like GQA",
    ),
    "minilm": _minilm,
}


def names() -> list[str]:
    """Names of the zoo entries (``"minilm"`` only when its package and transformers are installed)."""
    from tcomp.models.minilm import is_available

    return [n for n in ZOO if n != "minilm" or is_available()]


def get(name: str, seed: int = 0, **overrides: Any) -> ZooEntry:
    """Build zoo entry ``name`` with weights and example inputs drawn from ``seed``.

    ``overrides``: config fields of the model (e.g. ``attn_impl="eager"``, ``depth=3``) and
    ``batch`` / ``seq`` for the example inputs. Raises ``KeyError`` for an unknown name.
    """
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}")
    return ZOO[name](seed=seed, **overrides)


def default() -> str:
    """``"minilm"`` when the real weights can be loaded, else ``"bert"``."""
    from tcomp.models.minilm import is_available

    return "minilm" if is_available() else "bert"


__all__ = [
    "ZOO",
    "ZooEntry",
    "get",
    "default",
    "names",
    "ViT",
    "ViTConfig",
    "Bert",
    "BertConfig",
    "GPT",
    "GPTConfig",
    "random_ids",
    "padding_mask",
]
