"""Fidelity of linear / softmax-free attention on the real all-MiniLM-L6-v2 (CPU).

For each feature map and layer selection: mean cosine similarity of the sentence embeddings to
the original model's and top-1 retrieval agreement (each sentence's nearest neighbour among the
others is the same as with the original model), on the held-out sentences ``models.minilm.SENTENCES``;
calibration (hedgehog attention transfer, layers="auto", softmax-free landmarks) uses the
separate ``CALIBRATION`` sentences below. Also the calibration time and the pipeline's relative
error of the last hidden state vs float64. Writes bench/results/linear-minilm-cpu.json.

    python bench/linear_minilm.py [--steps 300] [--only elu1,hedgehog] [--rows 7,8 --out part.json]
    python bench/linear_minilm.py --merge part*.json --earlier old.json   # joins the parallel runs
"""

from __future__ import annotations

import argparse
import os
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
    "Where is the nearest pharmacy?",
    "The children built a sandcastle on the beach.",
    "Our neighbours adopted a puppy from the shelter last week.",
    "What time does the post office close on Saturdays?",
    "The hospital hired twenty new nurses this spring.",
    "A strong wind knocked down several trees overnight.",
    "He repaired the bicycle chain with an old set of tools.",
    "The government plans to raise taxes on tobacco.",
    "Bees are essential for pollinating many crops.",
    "I would like a cup of tea with milk, please.",
    "The marathon runners crossed the finish line exhausted.",
    "Our team won the chess tournament for the second year.",
    "The printer is out of paper again.",
    "Many birds migrate south when the days get shorter.",
    "The lawyer argued that the contract was never signed.",
    "She painted a portrait of her father in oil.",
    "Can you recommend a good book about history?",
    "The restaurant was closed for renovations until March.",
    "Engineers tested the engine at very high temperatures.",
    "Traffic lights at the junction stopped working during the storm.",
    "The students cheered when the exam results were announced.",
    "A thick fog covered the harbour in the early morning.",
    "The price of coffee has risen sharply this year.",
    "He apologised for arriving late to the meeting.",
    "The garden is full of roses and tulips in May.",
    "Researchers measured how quickly the glacier is melting.",
    "My phone battery dies before the end of the day.",
    "The mayor opened the new swimming pool on Friday.",
    "Whales communicate with each other using complex songs.",
    "The old castle attracts thousands of tourists every summer.",
    "Turn left at the church and the hotel is on your right.",
    "The baby finally fell asleep after midnight.",
    "Vaccines have saved millions of lives around the world.",
    "The factory will close next year, leaving hundreds without work.",
    "We need to buy eggs, butter and a loaf of bread.",
    "The pilot announced that we would land in twenty minutes.",
    "His novel was translated into more than thirty languages.",
    "The power went out just as the film was ending.",
    "Wolves were reintroduced into the national park in the nineties.",
    "The council voted to build more affordable housing.",
    "My brother is studying engineering at university.",
    "The soup was too salty, so we added some water.",
    "Is it safe to swim in the river after heavy rain?",
    "The athletes trained at high altitude before the games.",
    "The neighbours complained about the noise from the party.",
    "A new study links regular exercise to better mood.",
    "The plumber fixed the leaking pipe under the sink.",
    "Thousands of people marched through the capital on Sunday.",
    "The spacecraft sent back images of the planet's rings.",
    "I left my keys on the kitchen table.",
    "The bank approved their loan for a new house.",
    "Autumn leaves turned the forest red and gold.",
    "The conference will be held online this year.",
    "The shop assistant helped me find a warm winter coat.",
    "Earthquakes are common along the edges of tectonic plates.",
    "The team celebrated the end of a long project with dinner.",
    "Could you speak a little more slowly, please?",
    "The farmer milks the cows twice a day.",
    "A new vaccine trial begins next month in three countries.",
    "The children learned how to plant seeds in the school garden.",
    "The road along the coast is closed because of a landslide.",
    "Our internet connection is very slow this evening.",
    "The actor won an award for his role in the historical drama.",
    "The ice on the pond is too thin to walk on.",
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
    hh = {"feature_map": "hedgehog", "steps": steps, "lr": 0.01, "feature_dim": 64, "loss": "attention",
          "sequential": False, "correction": False, "holdout": 0.0}  # fmt: skip
    best = {**hh, "loss": "both", "sequential": True, "correction": True}
    return [
        ("elu1 all layers", "attention.linear", {"feature_map": "elu1"}, False),
        ("relu all layers", "attention.linear", {"feature_map": "relu"}, False),
        ("favor m=64 all layers", "attention.linear", {"feature_map": "favor", "num_features": 64}, False),
        ("favor m=256 all layers", "attention.linear", {"feature_map": "favor", "num_features": 256}, False),
        ("favor m=1024 all layers", "attention.linear", {"feature_map": "favor", "num_features": 1024}, False),
        ("hedgehog uncalibrated all layers", "attention.linear", {"feature_map": "hedgehog"}, False),
        ("hedgehog d'=32 calibrated all layers", "attention.linear", {**hh, "feature_dim": 32}, True),
        ("hedgehog d'=64 calibrated all layers", "attention.linear", hh, True),
        ("hedgehog d'=64 all layers, output loss", "attention.linear", {**hh, "loss": "output"}, True),
        ("hedgehog d'=64 all layers, attention+output loss", "attention.linear", {**hh, "loss": "both"}, True),
        ("hedgehog d'=64 all layers, sequential fitting", "attention.linear", {**hh, "sequential": True}, True),
        ("hedgehog d'=64 all layers, output correction", "attention.linear", {**hh, "correction": True}, True),
        ("hedgehog d'=64 all layers, both losses + sequential + correction", "attention.linear", best, True),
        ("hedgehog d'=128 calibrated all layers", "attention.linear", {**hh, "feature_dim": 128}, True),
        ("hedgehog d'=128 all layers, both losses + sequential + correction", "attention.linear",
         {**best, "feature_dim": 128}, True),
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


def merge(out: str, parts: list[str], steps: int, earlier: str | None = None) -> None:
    """Join the rows of ``--rows`` runs into one results file, in the order of ``configs``; rows
    of ``earlier`` results that were not rerun are kept, marked with the date they were measured."""
    import json

    from tcomp.models import minilm

    rows = {r["config"]: r for p in parts for r in json.loads(Path(p).read_text())["rows"]}
    if earlier:
        old = json.loads(Path(earlier).read_text())
        for r in old["rows"]:
            if r["config"] not in rows:
                rows[r["config"]] = {**r, "measured_earlier": old["date"],
                                     "earlier_calibration_sentences": old.get("calibration")}  # fmt: skip
    names = [name for name, *_ in configs(steps)]
    order = [n for n in names if n in rows] + [n for n in rows if n not in names]
    write_results(out, "linear_minilm", [rows[n] for n in order], held_out=len(minilm.SENTENCES),
                  calibration=len(CALIBRATION))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--only", default="", help="comma-separated substrings of row names")
    ap.add_argument("--rows", default="", help="comma-separated row indices to run (parallel runs)")
    ap.add_argument("--merge", nargs="*", default=None, help="result files of --rows runs to join into --out")
    ap.add_argument("--earlier", default=None, help="with --merge: earlier results whose rows not rerun are kept, marked")
    ap.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results" / "linear-minilm-cpu.json")
    )
    a = ap.parse_args()
    if a.merge:
        merge(a.out, a.merge, a.steps, a.earlier)
        return
    wanted = {int(x) for x in a.rows.split(",") if x}
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
    for i, (name, pass_name, opts, calibrated) in enumerate(configs(a.steps)):
        if wanted and i not in wanted:
            continue
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
        row["load_average"] = os.getloadavg()
        rows.append(row)
        # written after every row: a long run interrupted keeps what it measured
        write_results(
            a.out, "linear_minilm", rows, held_out=len(minilm.SENTENCES), calibration=len(CALIBRATION)
        )


if __name__ == "__main__":
    main()
