"""End-to-end inference: tcomp (exact passes, Triton backend) vs eager vs torch.compile (Inductor),
bf16 on the GPU, in the same run. Models are Hugging Face configs with random weights (no download):

* BERT-base (12 layers, 768 hidden, 12 heads), batch 32, seq 512 -> sequences/s
* ViT-B/16 (224x224), batch 256 -> images/s

Variants: tcomp (CUDA graphs, its default on GPU targets), tcomp without CUDA graphs, Inductor
(default mode) and Inductor mode="reduce-overhead" (its CUDA-graph mode). Also reports the compile
time of each: building it plus the calls until it runs at steady state.

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
            ref = model(**full).last_hidden_state.float()
            row["eager_s"] = timed(lambda: model(**full))
            variants = {
                # name: (build, calls until steady state); compile time = build + those calls
                "tcomp": (lambda: tcomp.optimize(model, small, target="h200"), 2),  # CUDA graphs (default)
                "tcomp_nograph": (lambda: tcomp.optimize(model, small, target="h200", cudagraphs=False), 1),
                "inductor": (lambda: torch.compile(model), 1),
                "inductor_ro": (lambda: torch.compile(model, mode="reduce-overhead"), 3),
            }
            for key, (make, calls) in variants.items():
                t = time.perf_counter()
                fn = make()
                for _ in range(calls):
                    fn(**full)
                torch.cuda.synchronize()
                row[f"{key}_compile_s"] = time.perf_counter() - t
                out = fn(**full).last_hidden_state.float()
                row[f"{key}_rel_err_vs_eager"] = ((out - ref).norm() / ref.norm()).item()
                row[f"{key}_s"] = timed(lambda: fn(**full))  # noqa: B023 - fn is used inside this iteration
                if key.startswith("tcomp"):
                    row[f"{key}_passes"] = {r.name: r.status for r in fn.report.passes}
                    row[f"{key}_cudagraphs"] = fn.cudagraphs
                fn = out = None
                torch._dynamo.reset()
                torch.cuda.empty_cache()
        names = ["eager", *variants]
        for k in names:
            row[f"{k}_per_s"] = batch / row[f"{k}_s"]
        for k in ("inductor", "inductor_ro", "eager"):
            row[f"tcomp_vs_{k}"] = row[f"{k}_s"] / row["tcomp_s"]
        rows.append(row)
        print(
            f"{name}: "
            + "  ".join(f"{k} {row[f'{k}_per_s']:.0f}/s" for k in names)
            + "  | tcomp vs inductor {:.2f}, vs inductor reduce-overhead {:.2f}, vs eager {:.2f}".format(
                row["tcomp_vs_inductor"], row["tcomp_vs_inductor_ro"], row["tcomp_vs_eager"]
            )
            + "  | compile s: "
            + "  ".join(f"{k} {row[f'{k}_compile_s']:.1f}" for k in variants)
            + f"  | err tcomp {row['tcomp_rel_err_vs_eager']:.1e}",
            flush=True,
        )
        model = None  # free GPU memory before the next model
        torch.cuda.empty_cache()
    write_results(args.out, "e2e_inference_bf16", rows)


if __name__ == "__main__":
    main()
