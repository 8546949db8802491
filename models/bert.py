"""A BERT-style encoder (Devlin et al. 2018), weight-compatible with Hugging Face ``BertModel``.

Token + position + token-type embeddings with LayerNorm, then post-LN blocks as in BERT
(``x = ln1(x + attn(x))``, ``x = ln2(x + mlp(x))``) with exact-erf GELU.
``forward(input_ids, attention_mask=None, token_type_ids=None) -> last hidden state (B, N, dim)``.

``attention_mask`` is (B, N) of 0/1: keys at 0 are masked out (padding). With ``attn_impl="sdpa"``
the mask goes to SDPA as a boolean ``attn_mask``; with ``"eager"`` it is an additive float mask of
``finfo.min`` entries, as in Hugging Face's eager BERT.

:meth:`Bert.from_hf` copies the weights of a Hugging Face ``BertModel`` (e.g. all-MiniLM-L6-v2)
without importing transformers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tcomp.models.common import MLP, attention, check_attn_impl, merge_heads, split_heads


@dataclass
class BertConfig:
    """Hyper-parameters of :class:`Bert`. Defaults make a tiny model for tests."""

    vocab_size: int = 1000
    max_len: int = 128
    type_vocab_size: int = 2
    dim: int = 64
    depth: int = 2
    heads: int = 4
    intermediate: int = 256
    attn_impl: str = "sdpa"  # "sdpa" | "eager"
    dropout: float = 0.0
    ln_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        check_attn_impl(self.attn_impl)
        if self.dim % self.heads:
            raise ValueError("dim must be a multiple of heads")


class BertEmbeddings(nn.Module):
    """Sum of word, position and token-type embeddings, then LayerNorm."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_len, cfg.dim)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)
        return self.drop(self.norm(x))


class BertAttention(nn.Module):
    """Multi-head self-attention with separate query/key/value projections (BERT naming)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.heads = cfg.heads
        self.impl = cfg.attn_impl
        self.dropout = cfg.dropout
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.k = nn.Linear(cfg.dim, cfg.dim)
        self.v = nn.Linear(cfg.dim, cfg.dim)
        self.o = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        q, k, v = (split_heads(proj(x), self.heads) for proj in (self.q, self.k, self.v))
        p = self.dropout if self.training else 0.0
        return self.o(merge_heads(attention(q, k, v, impl=self.impl, mask=mask, dropout_p=p)))


class BertLayer(nn.Module):
    """Post-LN block as in BERT: ``ln1(x + attn(x))`` then ``ln2(x + mlp(x))``."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attn = BertAttention(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.ln1 = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.mlp = MLP(cfg.dim, cfg.intermediate, dropout=cfg.dropout)
        self.ln2 = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.ln1(x + self.drop(self.attn(x, mask)))
        return self.ln2(x + self.mlp(x))


class Bert(nn.Module):
    """BERT encoder: ``forward(input_ids, attention_mask=None, token_type_ids=None) -> (B, N, dim)``."""

    def __init__(self, cfg: BertConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or BertConfig()
        self.embeddings = BertEmbeddings(cfg)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.depth))

    def padding_mask(self, attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
        """(B, N) 0/1 mask -> (B, 1, 1, N): bool (True = attend) for SDPA, additive float for eager."""
        keep = attention_mask[:, None, None, :]
        if self.cfg.attn_impl == "sdpa":
            return keep.bool()
        return (1.0 - keep.to(dtype)) * torch.finfo(dtype).min

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        x = self.embeddings(input_ids, token_type_ids)
        mask = None if attention_mask is None else self.padding_mask(attention_mask, x.dtype)
        for layer in self.layers:
            x = layer(x, mask)
        return x

    @classmethod
    def from_hf(cls, hf_model: nn.Module, attn_impl: str = "sdpa") -> Bert:
        """A :class:`Bert` holding the weights of a Hugging Face ``BertModel`` (pooler dropped).

        Reads ``hf_model.config`` and ``hf_model.state_dict()`` (weights are copied, not shared);
        transformers is not imported.
        Only absolute position embeddings and GELU (erf) activations are supported.
        """
        hc = hf_model.config
        if getattr(hc, "position_embedding_type", "absolute") != "absolute" or hc.hidden_act != "gelu":
            raise ValueError("from_hf supports absolute position embeddings and gelu activations only")
        cfg = BertConfig(
            vocab_size=hc.vocab_size,
            max_len=hc.max_position_embeddings,
            type_vocab_size=hc.type_vocab_size,
            dim=hc.hidden_size,
            depth=hc.num_hidden_layers,
            heads=hc.num_attention_heads,
            intermediate=hc.intermediate_size,
            attn_impl=attn_impl,
            ln_eps=hc.layer_norm_eps,
            pad_token_id=hc.pad_token_id if hc.pad_token_id is not None else 0,
        )
        with torch.device("meta"):  # no random init of weights about to be replaced
            model = cls(cfg)
        state = {
            k: v.detach().clone() for k, v in hf_state_dict_to_bert(hf_model.state_dict(), cfg.depth).items()
        }
        model.load_state_dict(state, assign=True)
        return model.eval()


def hf_state_dict_to_bert(sd: Mapping[str, Tensor], depth: int) -> dict[str, Tensor]:
    """Rename a Hugging Face ``BertModel`` state dict to :class:`Bert`'s names (pooler and buffers dropped)."""
    sd = {k.removeprefix("bert."): v for k, v in sd.items()}
    names = {
        "embeddings.word.weight": "embeddings.word_embeddings.weight",
        "embeddings.position.weight": "embeddings.position_embeddings.weight",
        "embeddings.token_type.weight": "embeddings.token_type_embeddings.weight",
        "embeddings.norm.weight": "embeddings.LayerNorm.weight",
        "embeddings.norm.bias": "embeddings.LayerNorm.bias",
    }
    per_layer = {
        "attn.q": "attention.self.query",
        "attn.k": "attention.self.key",
        "attn.v": "attention.self.value",
        "attn.o": "attention.output.dense",
        "ln1": "attention.output.LayerNorm",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
        "ln2": "output.LayerNorm",
    }
    for i in range(depth):
        for ours, theirs in per_layer.items():
            for p in ("weight", "bias"):
                names[f"layers.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
    return {ours: sd[theirs] for ours, theirs in names.items()}
