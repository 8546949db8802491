"""Token merging speed: a ViT-B/16-like zoo model (random init), images/s merged vs unmerged.

On CUDA (the issue's setting): ViT-B/16 (224 px, 12 blocks, dim 768, 12 heads), batch 256, bf16.
Variants, all measured in the same run:

* ``eager``: the PyTorch model; ``torch.compile``: Inductor on it;
* ``tcomp triton r=R``: ``tcomp.optimize(..., passes=[("tokens.merge", {"r": R})], backend="triton")``
  for R in 0 (no merging: our own baseline), 8, 13, 16 -- proportional attention runs inside the
  generated attention kernel as its (B, 1, 1, N) bias;
* ``tcomp eager r=R``: the same graphs on the dialect's reference ops (R = 0 and 16).

Without CUDA it runs a tiny configuration on the CPU (fp32, the eager variants only) so the script
itself is exercised. Merged graphs are built with ``verify=False``: token merging is EMPIRICAL and
on random weights its error says nothing (fidelity is measured on real weights by
bench/tome_minilm.py). Writes bench/results/tome-vit-<device>.json.

    python bench/tome_vit.py [--batch 256] [--iters 20] [--r 8,13,16]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_results  # noqa: E402


def timed(fn, warmup: int, iters: int, cuda: bool) -> float:
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--r", default="8,13,16")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.disable(logging.WARNING)

    import tcomp
    from tcomp.models import ViT, ViTConfig

    cuda = torch.cuda.is_available()
    if cuda:
        cfg = ViTConfig(image_size=224, patch_size=16, dim=768, depth=12, heads=12, num_classes=1000)
        dev, dtype, batch, target = "cuda", torch.bfloat16, args.batch or 256, "h200"
    else:
        cfg = ViTConfig(image_size=64, patch_size=8, dim=64, depth=4, heads=4, num_classes=10)
        dev, dtype, batch, target = "cpu", torch.float32, args.batch or 8, "cpu"
    rs = [int(x) for x in args.r.split(",")]
    if not cuda:
        rs = sorted({min(r, 2 + r // 8) for r in rs})
    torch.manual_seed(0)
    model = ViT(cfg).eval().to(dev, dtype)
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=dev, dtype=dtype)
    small = x[:2].clone()
    rows = []

    def add(label: str, fn, **info) -> float:
        with torch.no_grad():
            s = timed(fn, args.warmup, args.iters, cuda)
        rows.append({"variant": label, "seconds": s, "images_per_s": batch / s, **info})
        print(f"{label:28s} {batch / s:10.1f} images/s", flush=True)
        return s

    add("eager", lambda: model(x))
    if cuda:
        compiled = torch.compile(model)
        with torch.no_grad():
            compiled(x)
        add("torch.compile", lambda: compiled(x))
    backends = ["triton", "eager"] if cuda else ["eager"]
    base = {}
    with torch.no_grad():
        ref = model(x).float()
    for backend in backends:
        for r in [0, *rs] if backend == "triton" or not cuda else [0, max(rs)]:
            passes = [("tokens.merge", {"r": r})] if r else []
            fast = tcomp.optimize(
                model, (small,), target=target, backend=backend, passes=passes, verify=False
            )
            with torch.no_grad():
                out = fast(x).float()
            err = ((out - ref).norm() / ref.norm()).item()
            notes = [n for p in fast.report.passes if p.name == "tokens.merge" for n in p.notes]
            s = add(
                f"tcomp {backend} r={r}",
                lambda f=fast: f(x),
                backend=backend,
                r=r,
                rel_err_vs_eager=err,
                notes=notes,
            )
            if r == 0:
                base[backend] = s
            else:
                rows[-1]["speedup_vs_unmerged"] = base[backend] / s
                print(f"{'':28s} {base[backend] / s:.2f}x vs {backend} r=0, logits rel. err {err:.3f}")
    out = args.out or f"bench/results/tome-vit-{'h200' if cuda else 'cpu'}.json"
    write_results(
        out,
        "tome_vit",
        rows,
        model=f"ViT zoo {cfg}",
        batch=batch,
        dtype=str(dtype),
        goal=">= 2.0x at r=16 vs r=0",
    )


if __name__ == "__main__":
    main()
