"""Generate the measurement pages in docs/ from the benchmark results in bench/results/*.json.

Every measured number on the pages is read from (or computed from) a JSON file: nothing measured is
typed in the generator. The only numbers written in it are the goals the benchmarks are judged
against (``GOALS`` in scripts/docs_gen/common.py: targets set by the project's issues, not
measurements) and formatting precisions. Each page states the device, date and versions its JSON
records and what every column means. This file lists the pages and writes them; one renderer per page
lives in scripts/docs_gen/ (kernels.py, approx.py, quant.py).

    .venv/bin/python scripts/gen_docs.py            # rewrite docs/
    .venv/bin/python scripts/gen_docs.py --check    # exit 1 if docs/ differs from what the JSON gives
    .venv/bin/python scripts/gen_docs.py --out DIR  # write the pages into DIR instead

tests/test_docs.py runs it into a temporary folder and asserts the result equals the committed docs/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/ holds the docs_gen package

from docs_gen.approx import render_linear_attention, render_rasp, render_tome  # noqa: E402
from docs_gen.common import DOCS, RESULTS, Page, date_of, device_of, table  # noqa: E402
from docs_gen.generation import render_generation  # noqa: E402
from docs_gen.kernels import render_attention, render_autotune, render_e2e, render_rms_norm, render_rpe  # noqa: E402
from docs_gen.planner import render_plan  # noqa: E402
from docs_gen.quant import render_onnx, render_quant  # noqa: E402

PAGES = [
    Page(
        "attention.md",
        "Attention kernel",
        ["attention-h200.json"],
        render_attention,
        "The generated Triton attention kernel (`tcomp.attention` on the `triton` backend) against PyTorch's SDPA.",
    ),
    Page(
        "e2e.md",
        "End to end",
        ["e2e-h200.json", "autotune-h200.json"],
        render_e2e,
        "Whole models through `tcomp.optimize` on the Triton backend against eager PyTorch and `torch.compile`.",
    ),
    Page(
        "linear-attention.md",
        "Linear and softmax-free attention",
        ["linear-attention-h200.json", "linear-minilm-cpu.json"],
        render_linear_attention,
        "`attention.linear` and `attention.softmax_free`: the kernels' speed and the fidelity on a real model.",
    ),
    Page(
        "rpe-fft.md",
        "Relative position bias through FFT",
        ["rpe-scaling-h200.json", "rpe-scaling-cpu.json"],
        render_rpe,
        "`attention.rpe_fft`: the O(n log n) FFT op against softmax attention with the bias.",
    ),
    Page(
        "token-merging.md",
        "Token merging",
        ["tome-minilm-cpu.json", "tome-vit-h200.json"],
        render_tome,
        "`tokens.merge` (ToMe): fidelity on a real text model and speed on a ViT.",
    ),
    Page(
        "quantization.md",
        "Quantization",
        [
            "quant-minilm-cpu.json",
            "quant-linear-nvidia-h200-b1-fresh-autotune.json",
            "quant-linear-nvidia-h200.json",
        ],
        render_quant,
        "The weight-quantization passes: fidelity on a real model and the low-bit kernels' speed.",
    ),
    Page(
        "onnxruntime.md",
        "ONNX Runtime backend",
        ["onnx-minilm-cpu.json", "onnx-quant-minilm-cpu.json"],
        render_onnx,
        '`backend="onnxruntime"` on a real model, float and low-bit.',
    ),
    Page(
        "rasp.md",
        "RASP and Transformer Programs",
        ["rasp_train.json"],
        render_rasp,
        "Trained Transformer Programs and the RASP programs `rasp.extract` reads back from them.",
    ),
    Page(
        "rms-norm.md",
        "RMSNorm",
        ["rms-norm-nvidia-h100-80gb-hbm3.json"],
        render_rms_norm,
        "`tcomp.rms_norm` on its generated Triton kernel against eager, `aten.rms_norm` and `torch.compile`.",
    ),
    Page(
        "generation.md",
        "Generation",
        ["decode-attention-nvidia-h100-80gb-hbm3.json", "generate-nvidia-h100-80gb-hbm3.json",
         "profile-decode-8b-b1-nvidia-h200.json"],
        render_generation,
        "Decoders compiled for generation: the split-KV decode-attention kernel and whole-model decode steps.",
    ),
    Page(
        "planner.md",
        "Planning under an error budget",
        ["plan-minilm-cpu.json"],
        render_plan,
        "`optimize(max_error=...)` on a real model: the plan per budget against every candidate applied uniformly.",
    ),
    Page(
        "autotune.md",
        "Autotuned launch configurations",
        ["autotune-h200.json"],
        render_autotune,
        "What the autotuner chose on the H200, and how close the alternatives were.",
    ),
]


def render_index(data: dict[str, dict]) -> str:
    used = {s: p for p in PAGES for s in p.sources}
    page_rows = [[f"[{p.title}]({p.file})", p.about] for p in PAGES]
    file_rows = []
    for name in sorted(data):
        d = data[name]
        page = used.get(name)
        file_rows.append(
            [
                f"[`{name}`](../bench/results/{name})",
                device_of(name, d),
                date_of(d),
                f"[{page.file}]({page.file})" if page else "not rendered (add it to scripts/gen_docs.py)",
            ]
        )
    return f"""# Measurements

<!-- generated by scripts/gen_docs.py from bench/results/*.json; do not edit by hand -->

Every number on these pages is read from the benchmark results in `bench/results/*.json` by
`scripts/gen_docs.py`; nothing measured is typed by hand. Each page names the files it reads with their
device, date and library versions. Numbers from different files were measured at different times, on
different machines: compare rows within one table.

To change a page, re-run its benchmark (the script named on the page), then regenerate:

```sh
.venv/bin/python scripts/gen_docs.py          # rewrites docs/
.venv/bin/python scripts/gen_docs.py --check  # what tests/test_docs.py checks: docs/ matches the JSON
```

## Pages

{table(["page", "what it measures"], page_rows)}

## Result files

{table(["file", "device", "date", "page"], file_rows)}
"""


# ----------------------------------------------------------------------------------------- driver


def load_results(results: Path = RESULTS) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


def generate(results: Path = RESULTS) -> dict[str, str]:
    """File name -> markdown of every docs page, computed from the JSON files in ``results``."""
    data = load_results(results)
    pages = {"index.md": render_index(data).strip() + "\n"}
    for p in PAGES:
        missing = [s for s in p.sources if s not in data]
        if missing:
            raise SystemExit(f"{p.file}: result file(s) {missing} not found in {results}")
        pages[p.file] = p.text(data)
    return pages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DOCS, help="folder to write the pages into (default docs/)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON results")
    ap.add_argument(
        "--check", action="store_true", help="compare with --out instead of writing; exit 1 on any change"
    )
    args = ap.parse_args(argv)
    pages = generate(args.results)
    if args.check:
        stale = [
            f
            for f, text in pages.items()
            if not (args.out / f).is_file() or (args.out / f).read_text() != text
        ]
        extra = [p.name for p in args.out.glob("*.md") if p.name not in pages]
        for f in stale + extra:
            print(f"{args.out / f}: differs from what scripts/gen_docs.py generates", file=sys.stderr)
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for f, text in pages.items():
        (args.out / f).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
