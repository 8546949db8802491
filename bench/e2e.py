"""End-to-end inference: tcomp (exact passes, Triton backend) vs eager vs torch.compile (Inductor),
bf16 on the GPU, in the same run. Models are Hugging Face configs with random weights (no download):

* BERT-base (12 layers, 768 hidden, 12 heads), batch 32, seq 512 -> sequences/s
* ViT-B/16 (224x224), batch 256 -> images/s

Also reports the compile time: tcomp.optimize + first run, and torch.compile's first run.

    python bench/e2e.py [--out bench/results/e2e-h200.json] [--models bert,vit]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from results_io import write_results


def build(name: str):
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    torch.manual_seed(0)
    if name == "bert":
        model = BertModel(BertConfig(attn_implementation="sdpa"), add_pooling_layer=False)
        batch, seq = 32, 512
        full = {
            "input_ids": torch.randint(1000, 20000, (batch, seq)),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long),
        }
        small = {k: v[:2, :128].clone() for k, v in full.items()}
        return model, full, small, batch
    model = ViTModel(ViTConfig(attn_implementation="sdpa"), add_pooling_layer=False)
    batch = 256
    full = {"pixel_values": torch.randn(batch, 3, 224, 224)}
    small = {"pixel_values": full["pixel_values"][:2].clone()}
    return model, full, small, batch


def timed(fn, warmup: int = 3, iters: int = 10) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/e2e.json")
    ap.add_argument("--models", default="bert,vit")
    args = ap.parse_args()
    logging.disable(logging.WARNING)

    import tcomp

    rows = []
    for name in args.models.split(","):
        model, full, small, batch = build(name)
        model = model.eval().cuda().to(torch.bfloat16)
        cuda = lambda d: {k: v.cuda() for k, v in d.items()}  # noqa: E731
        full, small = cuda(full), cuda(small)
        row = {"model": name, "batch": batch}
        with torch.no_grad():
            row["eager_s"] = timed(lambda: model(**full))
            t = time.perf_counter()
            fast = tcomp.optimize(model, small, target="h200")  # verified on small inputs, dynamic dims
            fast(**full)
            torch.cuda.synchronize()
            row["tcomp_compile_s"] = time.perf_counter() - t
            row["tcomp_passes"] = {r.name: r.status for r in fast.report.passes}
            ref = model(**full).last_hidden_state.float()
            out = fast(**full).last_hidden_state.float()
            row["tcomp_rel_err_vs_eager"] = ((out - ref).norm() / ref.norm()).item()
            row["tcomp_s"] = timed(lambda: fast(**full))
            compiled = torch.compile(model)
            t = time.perf_counter()
            compiled(**full)
            torch.cuda.synchronize()
            row["inductor_compile_s"] = time.perf_counter() - t
            row["inductor_s"] = timed(lambda: compiled(**full))
        for k in ("eager", "tcomp", "inductor"):
            row[f"{k}_per_s"] = batch / row[f"{k}_s"]
        row["tcomp_vs_inductor"] = row["inductor_s"] / row["tcomp_s"]
        row["tcomp_vs_eager"] = row["eager_s"] / row["tcomp_s"]
        rows.append(row)
        print(
            f"{name}: eager {row['eager_per_s']:.0f}/s  tcomp {row['tcomp_per_s']:.0f}/s  inductor {row['inductor_per_s']:.0f}/s  "
            f"tcomp/inductor {row['tcomp_vs_inductor']:.2f}  compile: tcomp {row['tcomp_compile_s']:.1f}s "
            f"inductor {row['inductor_compile_s']:.1f}s  err {row['tcomp_rel_err_vs_eager']:.1e}",
            flush=True,
        )
        model = fast = compiled = None  # free GPU memory before the next model
        torch.cuda.empty_cache()
    write_results(args.out, "e2e_inference_bf16", rows)


if __name__ == "__main__":
    main()
