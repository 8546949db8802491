"""Fidelity of linear / softmax-free attention on the real all-MiniLM-L6-v2 (CPU).

For each feature map and layer selection: mean cosine similarity of the sentence embeddings to
the original model's and top-1 retrieval agreement (each sentence's nearest neighbour among the
others is the same as with the original model), on the held-out sentences ``models.minilm.SENTENCES``;
calibration (hedgehog attention transfer, layers="auto", softmax-free landmarks) uses the
separate ``CALIBRATION`` sentences below. Also the calibration time and the pipeline's relative
error of the last hidden state vs float64. Writes bench/results/linear-minilm-cpu.json.

    python bench/linear_minilm.py [--steps 300] [--only elu1,hedgehog]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_results  # noqa: E402

CALIBRATION = [
    "The committee will meet again next Tuesday to review the budget.",
    "Children were playing football in the park after school.",
    "He bought a new laptop because the old one kept crashing.",
    "Mountains in the north are covered with snow for most of the year.",
    "The museum opened a new exhibition about ancient Egypt.",
    "Our flight was delayed by three hours due to fog.",
    "She is learning to play the violin with a private teacher.",
    "The bakery on the corner sells fresh bread every morning.",
    "Scientists discovered a new species of frog in the rainforest.",
    "Please send me the report before the end of the day.",
    "The river flooded the village after a week of storms.",
    "A good night's sleep improves memory and concentration.",
    "The company announced record profits for the third quarter.",
    "They painted the kitchen walls a bright shade of yellow.",
    "My grandmother tells wonderful stories about her childhood.",
    "The new bridge reduced traffic in the city centre.",
    "Electric cars are becoming cheaper and more popular.",
    "The teacher asked the students to write an essay about friendship.",
    "Volcanic eruptions can affect the climate for several years.",
    "He forgot his umbrella and got soaked on the way home.",
    "The orchestra rehearsed the symphony for the concert tonight.",
    "Doctors recommend drinking plenty of water in hot weather.",
    "The library extended its opening hours during exams.",
    "A small boat drifted slowly across the calm lake.",
    "The software update fixed several security vulnerabilities.",
    "We watched the sunset from the top of the hill.",
    "The detective found a hidden letter in the old desk.",
    "Farmers are worried about the lack of rain this summer.",
    "The chef prepared a delicious soup with fresh vegetables.",
    "Astronomers observed a distant galaxy with the new telescope.",
    "The store offers a discount to students on weekdays.",
    "Learning a second language opens many opportunities.",
]


def embed(fn, inputs) -> torch.Tensor:
    from tcomp.models.minilm import mean_pool

    with torch.no_grad():
        return mean_pool(fn(**inputs), inputs["attention_mask"])


def fidelity(e: torch.Tensor, e0: torch.Tensor) -> tuple[float, float]:
    cos = float((e * e0).sum(-1).mean())

    def top1(x):
        s = x @ x.T
        s.fill_diagonal_(-2.0)
        return s.argmax(-1)

    return cos, float((top1(e) == top1(e0)).float().mean())


def configs(steps: int) -> list[tuple[str, str, dict, bool]]:
    """(row name, pass, options, uses calibration)."""
    hh = {"feature_map": "hedgehog", "steps": steps, "feature_dim": 64}
    return [
        ("elu1 all layers", "attention.linear", {"feature_map": "elu1"}, False),
        ("relu all layers", "attention.linear", {"feature_map": "relu"}, False),
        ("favor m=64 all layers", "attention.linear", {"feature_map": "favor", "num_features": 64}, False),
        ("favor m=256 all layers", "attention.linear", {"feature_map": "favor", "num_features": 256}, False),
        ("favor m=1024 all layers", "attention.linear", {"feature_map": "favor", "num_features": 1024}, False),
        ("hedgehog uncalibrated all layers", "attention.linear", {"feature_map": "hedgehog"}, False),
        ("hedgehog d'=32 calibrated all layers", "attention.linear", {**hh, "feature_dim": 32}, True),
        ("hedgehog d'=64 calibrated all layers", "attention.linear", hh, True),
        ("hedgehog d'=64 calibrated, layer 0 kept softmax", "attention.linear", {**hh, "keep": [0]}, True),
        ("hedgehog d'=64 calibrated, layers 0,5 kept softmax", "attention.linear", {**hh, "keep": [0, 5]}, True),
        ("hedgehog d'=64 calibrated, layers=auto (max_error 0.15)", "attention.linear",
         {**hh, "layers": "auto", "max_error": 0.15}, True),
        ("elu1, layers=auto (max_error 0.35)", "attention.linear",
         {"feature_map": "elu1", "layers": "auto", "max_error": 0.35}, True),
        ("softmax_free m=16 calibrated all layers", "attention.softmax_free", {"landmarks": 16}, True),
        ("softmax_free m=32 calibrated all layers", "attention.softmax_free", {"landmarks": 32}, True),
        ("softmax_free m=32 symmetric all layers", "attention.softmax_free",
         {"landmarks": 32, "normalize": "symmetric"}, True),
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--only", default="", help="comma-separated substrings of row names")
    ap.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results" / "linear-minilm-cpu.json")
    )
    a = ap.parse_args()
    import tcomp
    from tcomp.models import minilm
    from tcomp.pipeline import registered_passes

    torch.manual_seed(0)
    m = minilm.load()
    held_out = minilm.example_inputs(m.tokenizer, minilm.SENTENCES)
    calib = [
        minilm.example_inputs(m.tokenizer, CALIBRATION[i : i + 16]) for i in range(0, len(CALIBRATION), 16)
    ]
    e0 = embed(m.encoder, held_out)
    rows = []
    for name, pass_name, opts, calibrated in configs(a.steps):
        if a.only and not any(s in name for s in a.only.split(",")):
            continue
        tcomp.api._load_plugins()
        if pass_name not in registered_passes():
            rows.append({"config": name, "status": f"pass {pass_name} not registered"})
            continue
        t0 = time.perf_counter()
        om = tcomp.optimize(
            m.encoder, calib[0], passes=[(pass_name, opts)], calibration=calib if calibrated else None,
            verify=True, verify_samples=1,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        rec = om.report[pass_name]
        # measure the rewritten graph even when the pipeline rolled it back (honest rows for failures)
        gm = om.graph_module
        if rec.status != "applied":
            from tcomp.capture import capture
            from tcomp.pipeline import run_pipeline

            gm = run_pipeline(capture(m.encoder, (), calib[0]).gm, ["canonicalize", (pass_name, {**opts, **(
                {"calibration": calib} if calibrated else {})})]).gm  # fmt: skip
        cos, agree = fidelity(embed(gm, held_out), e0)
        row = {
            "config": name, "pass": pass_name, "options": opts, "calibrated": calibrated,
            "cosine_mean": cos, "top1_agreement": agree, "seconds_optimize": seconds,
            "pipeline_status": rec.status, "pipeline_rel_error": rec.error, "tolerance": rec.tolerance,
            "contract": rec.contract, "rewrites": rec.rewrites, "notes": rec.notes,
            "site_calib_error": [s.get("calib_error") for s in rec.sites],
        }  # fmt: skip
        print(f"{name:55s} cos {cos:.4f}  top1 {agree:.3f}  {rec.status} err {rec.error}  {seconds:.1f}s")
        rows.append(row)
        # written after every row: a long run interrupted keeps what it measured
        write_results(
            a.out, "linear_minilm", rows, held_out=len(minilm.SENTENCES), calibration=len(CALIBRATION)
        )


if __name__ == "__main__":
    main()
