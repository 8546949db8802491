"""Token merging fidelity on the real all-MiniLM-L6-v2 and the project's sentences (CPU is fine).

Each sentence of ``models.minilm.SENTENCES`` is embedded alone (batch 1, its own length: no padding,
so "tokens removed" counts real tokens only) by the original model and by the model rewritten with
``tokens.merge`` under several schedules. Per schedule: the mean and worst cosine between merged and
original embeddings, top-1 retrieval agreement (each sentence's nearest other sentence, merged
embeddings vs original ones), and the fraction of tokens removed -- averaged over the six blocks'
MLPs (``1 - sum_l (N_l - r_l) / (L * N)``, the compute proxy) and at the end. The issue's goal:
cosine >= 0.98 at 30 % fewer tokens. A second table embeds all sentences in one padded batch.
Writes bench/results/tome-minilm-cpu.json.

    python bench/tome_minilm.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_results  # noqa: E402

SCHEDULES: list[tuple[str, dict]] = [
    ("r=1 constant", {"r": 1}),
    ("r=2 constant", {"r": 2}),
    ("r=1, no proportional attention", {"r": 1, "prop_attn": False}),
    ("r=2 decreasing (inflect -0.5)", {"r": 2, "inflect": -0.5}),
    ("r=2 increasing (inflect +1)", {"r": 2, "inflect": 1.0}),
    ("layers 3-6, r=1", {"r": [0, 0, 1, 1, 1, 1]}),
    ("layers 2-6, r=1", {"r": [0, 1, 1, 1, 1, 1]}),
    ("layers 4-6, r=2", {"r": [0, 0, 0, 2, 2, 2]}),
    ("keep 0.8 at the end", {"keep": 0.8}),
    ("keep 0.6 at the end", {"keep": 0.6}),
    ("keep 0.4 at the end", {"keep": 0.4}),
]


def main() -> None:
    import tcomp.passes  # noqa: F401 - registers tokens.merge
    from tcomp.capture import capture
    from tcomp.models.minilm import SENTENCES, example_inputs, load, mean_pool
    from tcomp.pipeline import run_pipeline

    torch.manual_seed(0)
    m = load()
    graphs, data = {}, []
    for s in SENTENCES:
        inp = example_inputs(m.tokenizer, [s])
        n = inp["input_ids"].shape[1]
        if n not in graphs:  # one static capture per sentence length
            cap = capture(
                m.encoder, (inp["input_ids"],), {"attention_mask": inp["attention_mask"]}, dynamic=False
            )
            graphs[n] = run_pipeline(cap.gm, ["canonicalize"]).gm
        with torch.no_grad():
            data.append((inp, n, mean_pool(m.encoder(**inp), inp["attention_mask"])[0]))
    base = torch.stack([d[2] for d in data])
    base_nn = _nearest(base)
    rows = []
    for label, opts in SCHEDULES:
        embs, avg, end = [], [], []
        for inp, n, _ in data:
            res = run_pipeline(graphs[n], [("tokens.merge", opts)])
            rec = res.records[-1]
            if rec.status == "rolled_back":
                raise RuntimeError(f"{label}: {rec.reason}")
            with torch.no_grad():
                out = res.gm(inp["input_ids"], attention_mask=inp["attention_mask"])
            embs.append(mean_pool(out, inp["attention_mask"])[0])
            sites = rec.sites or [{"tokens": n, "r": 0}] * 6
            avg.append(1 - sum(s["tokens"] - s["r"] for s in sites) / (n * len(sites)))
            end.append((n - sites[-1]["tokens"] + sites[-1]["r"]) / n)
        removed = {"tokens_removed_avg": sum(avg) / len(avg), "tokens_removed_end": sum(end) / len(end)}
        rows.append(_row(label, opts, removed, torch.stack(embs), base, base_nn))
    padded = _padded_batch(m, base, base_nn)
    lengths = [d[1] for d in data]
    write_results(
        Path(__file__).resolve().parent / "results" / "tome-minilm-cpu.json",
        "tome_minilm",
        rows,
        model="all-MiniLM-L6-v2",
        sentences=len(SENTENCES),
        token_lengths=lengths,
        goal="cosine >= 0.98 at 30% fewer tokens",
        padded_batch=padded,
    )


PADDED = [("r=1", {"r": 1}), ("r=2", {"r": 2}), ("layers 3-6, r=2", {"r": [0, 0, 2, 2, 2, 2]})]


def _padded_batch(m, base: torch.Tensor, base_nn: torch.Tensor) -> list[dict]:
    """All sentences in one batch padded to the longest: padding pairs merge first (for free), so
    short sentences lose fewer real tokens. "positions removed" counts padding too (compute)."""
    from tcomp.capture import capture
    from tcomp.models.minilm import SENTENCES, example_inputs, mean_pool
    from tcomp.pipeline import run_pipeline

    inp = example_inputs(m.tokenizer, SENTENCES)
    n = inp["input_ids"].shape[1]
    gm = run_pipeline(
        capture(m.encoder, (inp["input_ids"],), {"attention_mask": inp["attention_mask"]}).gm,
        ["canonicalize"],
    ).gm
    rows = []
    for label, opts in PADDED:
        res = run_pipeline(gm, [("tokens.merge", opts)])
        with torch.no_grad():
            emb = mean_pool(
                res.gm(inp["input_ids"], attention_mask=inp["attention_mask"]), inp["attention_mask"]
            )
        sites = res.records[-1].sites
        removed = {"positions_removed_avg": 1 - sum(s["tokens"] - s["r"] for s in sites) / (n * len(sites))}
        rows.append(_row(f"padded batch ({n}) {label}", opts, removed, emb, base, base_nn))
    return rows


def _row(label: str, opts: dict, removed: dict, emb, base, base_nn) -> dict:
    """One result row: fractions removed, cosine to the original embeddings, top-1 agreement."""
    cos = (emb * base).sum(-1)
    row = {"schedule": label, "options": opts, **{k: round(v, 4) for k, v in removed.items()}}
    row |= {"cosine_mean": round(cos.mean().item(), 5), "cosine_min": round(cos.min().item(), 5)}
    row["top1_agreement"] = round((_nearest(emb) == base_nn).float().mean().item(), 4)
    gone = "  ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in removed.items())
    print(
        f"{label:34s} {gone}  cos mean {row['cosine_mean']:.4f} min {row['cosine_min']:.4f}  top-1 {row['top1_agreement']:.3f}"
    )
    return row


def _nearest(emb: torch.Tensor) -> torch.Tensor:
    sim = emb @ emb.T
    sim.fill_diagonal_(float("-inf"))
    return sim.argmax(-1)


if __name__ == "__main__":
    main()
