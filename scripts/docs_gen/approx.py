"""Pages of the approximate attention and token passes and of RASP: linear attention, token merging, RASP."""

from __future__ import annotations

from .common import (
    GOALS,
    columns,
    fixed,
    kilo,
    met,
    num,
    pct,
    span,
    table,
    times,
    when,
)


def render_linear_attention(data: dict) -> str:
    k = data["linear-attention-h200.json"]
    rows = k["rows"]
    ns = sorted({r["N"] for r in rows})
    by = {(r["N"], r["causal"]): r for r in rows}
    kt = []
    for n in ns:
        nc, c = by[(n, False)], by[(n, True)]
        kt.append(
            [
                f"{kilo(n)} ({nc['B']})",
                f"{num(nc['tcomp_ms'])} ms",
                f"{nc['x_floor']:.1f}",
                times(nc["speedup_vs_torch"], 1),
                f"{num(c['tcomp_ms'])} ms",
                f"{num(c['fla_ms'])} ms",
                times(c["tcomp_vs_fla"]),
                f"{num(nc['sdpa_ms'])} / {num(c['sdpa_ms'])} ms",
            ]
        )
    causal = [r for r in rows if r["causal"]]
    noncausal = [r for r in rows if not r["causal"]]
    one = rows[0]
    g_fla = GOALS["linear_causal_vs_fla"]
    g_torch = GOALS["linear_noncausal_vs_torch"]
    g_floor = GOALS["linear_noncausal_x_floor"]
    cross = k.get("crossover_n_vs_sdpa", {})

    m = data["linear-minilm-cpu.json"]
    fid = []
    for r in m["rows"]:
        if "measured_earlier" in r:
            measured = (
                f"{when(r['measured_earlier'])}, {r['earlier_calibration_sentences']} calibration sentences"
            )
        else:
            measured = f"{when(r.get('measured', m['date']))}, {m['calibration']} calibration sentences"
        fid.append(
            [
                r["config"],
                f"`{r['pass']}`",
                fixed(r["cosine_mean"], 3),
                pct(r["top1_agreement"]),
                r["pipeline_status"],
                f"{num(r['pipeline_rel_error'])} / {num(r['tolerance'])}",
                str(r["rewrites"]),
                f"{r['seconds_optimize']:.0f}",
                measured,
            ]
        )
    best = next(r for r in m["rows"] if r["config"] == "hedgehog d'=64 calibrated all layers, 300 steps")
    g_cos, g_top = GOALS["hedgehog_cosine"], GOALS["hedgehog_top1"]
    hh = [
        r["seconds_optimize"]
        for r in m["rows"]
        if r["options"].get("feature_map") == "hedgehog" and r["calibrated"] and "measured_earlier" not in r
    ]
    return f"""
## Kernels on the GPU

`tcomp.linear_attention` Triton kernels (two-phase non-causal, chunked causal), {one["dtype"]},
B·N = {kilo(one["B"] * one["N"])} tokens, H = {one["H"]}, D = F = {one["D"]}, autotuned launches, against a
hand-written PyTorch linear attention, SDPA (softmax attention, for the crossover) and
flash-linear-attention ({k.get("fla", "fla")} with `normalize=True`, causal only) in the same run.

{
        columns(
            [
                ("N (B)", "sequence length (batch)"),
                (
                    "non-causal tcomp",
                    "kernel time; **× floor**: that time over the time to move the inputs and output once "
                    "at the GPU's bandwidth; **vs PyTorch**: speed-up over the PyTorch linear attention",
                ),
                (
                    "causal tcomp, fla",
                    "kernel times; **tcomp vs fla**: fla's time over tcomp's (above 1× tcomp is faster)",
                ),
                ("SDPA", "softmax attention's time at the same shape, non-causal / causal"),
            ]
        )
    }

{
        table(
            [
                "N (B)",
                "non-causal tcomp",
                "× floor",
                "vs PyTorch",
                "causal tcomp",
                "fla",
                "tcomp vs fla",
                "SDPA (non-causal / causal)",
            ],
            kt,
        )
    }

- Causal goal (≤ {g_fla:.1f}× fla's time): {met(all(r["tcomp_vs_fla"] >= 1 / g_fla for r in causal))}
  ({span([r["tcomp_vs_fla"] for r in causal], times)} faster).
- Non-causal, ≥ {g_torch:.0f}× the PyTorch linear attention: {
        met(all(r["speedup_vs_torch"] >= g_torch for r in noncausal))
    } ({span([r["speedup_vs_torch"] for r in noncausal], lambda x: times(x, 1))}); within
  {g_floor}× of the bandwidth floor: {met(all(r["x_floor"] <= g_floor for r in noncausal))}
  ({span([r["x_floor"] for r in noncausal], lambda x: f"{x:.1f}×")}).
- Relative difference from the fp32 PyTorch reference:
  {span([r["max_rel_diff_vs_torch"] for r in rows], lambda x: num(x, 2))} (fla:
  {span([r["fla_rel_diff_vs_torch"] for r in causal], lambda x: num(x, 2))}).
- Crossover against SDPA: non-causal from N = {kilo(cross.get("non_causal", 0))}, causal from
  N = {kilo(cross.get("causal", 0))}.

## Fidelity on a real model

Real all-MiniLM-L6-v2 on the CPU, {m["held_out"]} held-out sentences, mean-pooled sentence embeddings compared
with the original model's. `attention.linear` with feature maps `elu1`, `relu`, `favor` (Performer random
features, m of them) or `hedgehog` (learned per head, fitted by attention transfer on calibration sentences,
d' features); `attention.softmax_free` (SOFT, m landmarks). `keep` / `layers="auto"` leave some layers on
softmax.

{
        columns(
            [
                ("cosine", "mean cosine similarity of the sentence embeddings to the original's"),
                (
                    "top-1",
                    "share of sentences whose nearest neighbour among the others is the same as with the original "
                    "model (retrieval agreement; one sentence in the set moves it by a whole step)",
                ),
                (
                    "pipeline",
                    "what the verified pipeline did with the pass: `applied`, `rolled_back` (the contract's "
                    "check failed) or `skipped` (nothing rewritten)",
                ),
                (
                    "error / tolerance",
                    "the model's relative output error vs float64 and the contract's threshold",
                ),
                ("sites", "attention sites rewritten; **s**: seconds to optimize (calibration included)"),
                ("measured", "when the row was measured and on how many calibration sentences"),
            ]
        )
    }

{
        table(
            [
                "configuration",
                "pass",
                "cosine",
                "top-1",
                "pipeline",
                "error / tolerance",
                "sites",
                "s",
                "measured",
            ],
            fid,
        )
    }

Calibrated hedgehog on every layer with 300 fitting steps per layer (`{best["config"]}`): cosine
{fixed(best["cosine_mean"], 3)} (goal ≥ {g_cos}: {met(best["cosine_mean"] >= g_cos)}), retrieval
{pct(best["top1_agreement"])} (goal ≥ {pct(g_top, 0)}: {met(best["top1_agreement"] >= g_top)}). Retrieval
moves in steps of one sentence in {m["held_out"]} and varies between configurations of equal cosine, so read
it with that resolution. The attention-transfer levers (output loss, sequential fitting, per-head output
correction) move the cosine little; calibrated hedgehog took {span(hh, lambda x: f"{x:.0f}")} s per
configuration on this CPU. Hybrids that keep one or two softmax layers score highest.
"""


def render_tome(data: dict) -> str:
    m = data["tome-minilm-cpu.json"]
    fid = [
        [
            r["schedule"],
            pct(r["tokens_removed_avg"], 0),
            pct(r["tokens_removed_end"], 0),
            f"{fixed(r['cosine_mean'], 3)} / {fixed(r['cosine_min'], 3)}",
            fixed(r["top1_agreement"], 2),
        ]
        for r in m["rows"]
    ]
    fid += [
        [
            r["schedule"] + " (padding merged first)",
            pct(r["positions_removed_avg"], 0) + " of positions",
            "–",
            f"{fixed(r['cosine_mean'], 3)} / {fixed(r['cosine_min'], 3)}",
            fixed(r["top1_agreement"], 2),
        ]
        for r in m.get("padded_batch", [])
    ]
    lens = m["token_lengths"]
    v = data["tome-vit-h200.json"]
    base = next(r for r in v["rows"] if r["variant"] == "tcomp triton r=0")
    sp = [
        [
            r["variant"],
            f"{r['images_per_s']:.0f}",
            times(r["images_per_s"] / base["images_per_s"]) if r.get("backend") == "triton" else "",
            num(r["rel_err_vs_eager"], 2) if "rel_err_vs_eager" in r else "",
        ]
        for r in v["rows"]
    ]
    r16 = next(r for r in v["rows"] if r["variant"] == "tcomp triton r=16")
    g_cos, g_rm = GOALS["tome_minilm"]
    e16 = next((r for r in v["rows"] if r["variant"] == "tcomp eager r=16"), None)
    eager_txt = (
        f" On the eager reference ops r=16 gives {times(e16['speedup_vs_unmerged'])} over eager r=0."
        if e16
        else ""
    )
    return f"""
`tokens.merge` (ToMe): between attention and MLP of each encoder block, bipartite soft matching on the
attention keys merges the `r` most similar token pairs by size-weighted average; later attention is
proportional (a log(size) bias). With `outputs="unmerge"` (the default) the token count is restored
after the last block, so output shapes never change.

## Fidelity on a real model

all-MiniLM-L6-v2 on the CPU, each of the {m["sentences"]} sentences embedded alone
({min(lens)}–{max(lens)} tokens), then all of them in one padded batch.

{
        columns(
            [
                (
                    "token-layers removed",
                    "share of (token, layer) pairs the merges removed, averaged over the blocks",
                ),
                ("removed at the end", "share of tokens gone after the last block"),
                ("cosine", "mean / minimum cosine of the mean-pooled sentence embedding to the original's"),
                ("top-1", "retrieval agreement: share of sentences whose nearest neighbour is unchanged"),
            ]
        )
    }

{table(["schedule", "token-layers removed", "removed at the end", "cosine mean / min", "top-1"], fid)}

Goal ({m["goal"]}): {
        met(any(r["cosine_mean"] >= g_cos and r["tokens_removed_avg"] >= g_rm for r in m["rows"]))
    }.
These sentences are short, with little redundancy to merge.

## Speed on the GPU

`{v["model"]}`, random init, batch {v["batch"]}, {v["dtype"]}, images/s in the same run. The merge runs on the
Triton backend as one generated gather-sum kernel after a sync-free matching plan, so the merged model
replays as one CUDA graph.

{
        columns(
            [
                ("images/s", "throughput"),
                ("vs tcomp triton r=0", "throughput over tcomp's unmerged model on the Triton backend"),
                ("error vs eager", "relative error of the output against eager PyTorch"),
            ]
        )
    }

{table(["variant", "images/s", "vs tcomp triton r=0", "error vs eager"], sp)}

Goal ({v["goal"]}): {met(r16["speedup_vs_unmerged"] >= GOALS["tome_vit_r16"])} ({
        times(r16["speedup_vs_unmerged"])
    }).{eager_txt}
The merged model has not been profiled since the merge became one kernel.
"""


RASP_PRESETS = {
    None: "one-variable readout (the model's output is one categorical variable)",
    "linear": 'linear readout (a classifier over every variable, `ProgramConfig(readout="linear")`)',
    "closest": "linear readout plus closest-selection heads",
    "closest-wide": "a wider model with more width and closest heads and MLPs",
    "authors": "the sizes of the authors' released runs, batch 512",
}


def _rasp_config(c: dict) -> str:
    names = [
        ("cat_heads", "cat"),
        ("width_heads", "width"),
        ("closest_heads", "closest"),
        ("num_heads", "num"),
        ("mlps", "MLP"),
        ("num_mlps", "num MLP"),
    ]
    parts = [f"{c[k]} {v}" for k, v in names if c.get(k)]
    return f"{c['layers']} × ({', '.join(parts)})"


def render_rasp(data: dict) -> str:
    d = data["rasp_train.json"]
    rows = d["rows"]
    tasks = list(dict.fromkeys(r["task"] for r in rows))

    def dev(r: dict) -> str:
        x = r.get("device", d["device"])
        return "CPU" if x in ("cpu", "x86_64") else x.replace("NVIDIA ", "")

    best = []
    for t in tasks:
        rs = [r for r in rows if r["task"] == t]
        b = max(rs, key=lambda r: r["val_accuracy"])
        top_test = max(r["program_accuracy"] for r in rs)
        best.append(
            [
                t,
                f"**{pct(b['program_accuracy'], 2)}**",
                f"`{b.get('preset') or 'one-variable'}`, {dev(b)}",
                "yes" if b["program_accuracy"] == top_test else "no",
                pct(b["authors_log_accuracy"], 2),
                str(sum(1 for r in rs)),
            ]
        )
    full = [
        [
            r["task"],
            f"`{r.get('preset') or 'one-variable'}`",
            dev(r),
            _rasp_config(r["config"]),
            f"{r['steps']} × {r['restarts']} (batch {r['training']['batch']}, lr {r['training']['lr']})",
            pct(r["val_accuracy"], 2),
            pct(r["program_accuracy"], 2),
            pct(r["agreement"], 0),
            f"{r['train_seconds']:.0f}",
        ]
        for r in rows
    ]
    presets = list(dict.fromkeys(r.get("preset") for r in rows))
    preset_lines = []
    for p in presets:
        base = p.removesuffix("-noisy") if p else p
        text = RASP_PRESETS.get(base, "see `bench/rasp_train.py`")
        if p and p.endswith("-noisy"):
            text += (
                ", with full-scale Gumbel noise in training (`train(gumbel=1.0)`; the default scales it down)"
            )
        preset_lines.append(f"- `{p or 'one-variable'}`: {text}.")
    agree = all(r["agreement"] == 1.0 for r in rows)
    return f"""
`tcomp.rasp` is the RASP language (an evaluator, a printer to Python, static validation, a compiler to
PyTorch weights) and `rasp.extract` reads a RASP program back from a trained Transformer-Program-style
model (Friedman et al. 2023). The benchmark trains such models on the paper's tasks, extracts their
programs and scores model and program on a held-out test split (every token counted). Data as in the
authors' scripts; several restarts per task, the restart with the best validation accuracy kept and scored
once on the test split. The printed programs are kept next to the JSON in `bench/results/rasp/`.

Presets of `bench/rasp_train.py` (the exact layer sizes are in each row below):

{chr(10).join(preset_lines)}

{
        columns(
            [
                (
                    "best",
                    "test accuracy of the extracted program from the row with the highest validation accuracy "
                    "(the first such row on a tie); "
                    "**also best on test**: whether that row also has the highest test accuracy of the task",
                ),
                (
                    "authors' log",
                    "the last (argmax) test accuracy in the training logs the authors released "
                    "(princeton-nlp/TransformerPrograms, `scripts/output/rasp/<task>/…/s0/results.csv`, one seed of their "
                    "3-layer, 4 + 4-head runs; not the paper's Table 1); – where no log exists",
                ),
                (
                    "layers × (heads, MLPs)",
                    "categorical, width (SelectorWidth), closest-selection and numerical heads and "
                    "the MLPs of each layer",
                ),
                ("steps × restarts", "training steps per restart, restarts; batch size and learning rate"),
                (
                    "validation, test",
                    "accuracy on the validation split and the extracted program's on the test split",
                ),
                ("agreement", "share of test tokens where the extracted program and the model agree"),
                ("s", "training seconds"),
            ]
        )
    }

{table(["task", "best", "preset, device", "also best on test", "authors' log", "rows"], best)}

The extracted program agrees with the model on every test token in every row: {"yes" if agree else "**no**"}.

Every row:

{
        table(
            [
                "task",
                "preset",
                "device",
                "layers × (heads, MLPs)",
                "steps × restarts",
                "validation",
                "test",
                "agreement",
                "s",
            ],
            full,
        )
    }
"""
