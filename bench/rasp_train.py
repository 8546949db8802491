"""Train Transformer Programs on the tasks of Friedman et al. 2023 and check the extracted programs.

    nice -n 10 .venv/bin/python bench/rasp_train.py hist reverse --seeds 0   # steps/restarts: BUDGET
    python3 bench/rasp_train.py --preset paper --device cuda --jobs 7        # the paper's size, on a GPU
    python3 bench/rasp_train.py double-hist --preset closest-wide-noisy --jobs 2 --steps 2500 \
        --restarts 16 --split-restarts                                       # the table's double-hist row

Per task and seed: ``restarts`` trainings, the one with the best validation accuracy kept (see
``train``); accuracy of its discrete model on 1000 test inputs (lengths as the paper's data, all
tokens counted), agreement of the RASP program that ``rasp.extract`` reads from the captured
weights with the model (must be 100%), how many numerical heads that program reads, wall time and the load average at the start (shared machine). Weights go to bench/results/rasp/<task>-<seed>[-<preset>].safetensors (not kept in git), the table to
bench/results/rasp_train.json, the programs as JSON next to the weights (``tcomp.rasp.save_json``;
``tcomp rasp show bench/results/rasp/hist-0.json`` prints one as Python).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from safetensors.torch import save_file

from tcomp import rasp
from tcomp.capture import capture
from tcomp.rasp import language as L
from tcomp.rasp.extract import extract
from tcomp.rasp.tasks import TASKS, make_split
from tcomp.rasp.train import predictions, train

# layers / heads / MLPs per task (small: CPU budget; the paper uses 3 layers of 4 categorical and
# 4 numerical heads and 2 MLPs each) and training settings; restarts are selected on validation.
# NUM: one numerical head and one numerical MLP per layer besides the categorical parts (issue 9)
NUM = dict(layers=3, cat_heads=1, width_heads=1, mlps=1, num_heads=1, num_mlps=1)
# key heads (query, key and value variables; issue 9) measured lower at 1000 x 16, so no task uses
# them yet: sort 61.04 % with dict(layers=3, cat_heads=0 or 1, width_heads=1, mlps=1, key_heads=1)
# (vs 62.51 % NUM; it learns rank = SelectorWidth(tokens <= tokens), then the token whose rank is
# index + 1, which has no value where tokens repeat), 51.87 % with NUM plus key_heads=1; most-freq
# 32.60 % (cat_heads=0) / 36.97 % (cat_heads=1) vs 55.87 %
LINEAR = dict(readout="linear")  # the paper's output layer: a linear classifier over every variable
CONFIGS = {
    "hist": dict(layers=1, cat_heads=0, width_heads=1, mlps=0),
    "reverse": dict(layers=2, cat_heads=1, width_heads=1, mlps=1),
    "double-hist": NUM,
    "sort": NUM,
    "most-freq": dict(layers=3, cat_heads=1, width_heads=1, mlps=1),  # NUM measured lower: 52.4 vs 55.9 %
    "dyck-1": dict(layers=3, cat_heads=1, width_heads=1, mlps=1),
    "dyck-2": dict(layers=3, cat_heads=1, width_heads=1, mlps=1),
}
# --preset paper: the size of the paper's runs (3 layers; its 4 categorical heads as key heads, its
# 4 numerical heads -- sums of ones, i.e. counts -- as width heads; 2 + 2 MLPs; the linear readout),
# batch 512 and lr 5e-2 as its scripts; our steps are fewer than its 250 epochs (~9,800 steps)
PAPER = dict(layers=3, cat_heads=0, width_heads=4, key_heads=4, mlps=2, num_heads=0, num_mlps=0, **LINEAR)
PRESETS = {
    "cpu": (CONFIGS, dict(lr=0.1, tau_init=3.0, tau_end=0.05, batch=64)),
    "paper": ({t: PAPER for t in CONFIGS}, dict(lr=0.05, tau_init=3.0, tau_end=0.05, batch=512)),
    # closest heads (the paper's categorical heads) with the linear readout, for the tasks the linear
    # preset leaves below the authors' logs: the configurations that measured best on CPU (1000 x 16)
    "closest": (
        {
            **{t: {**NUM, "closest_heads": 1, **LINEAR} for t in CONFIGS},
            "sort": dict(layers=3, cat_heads=0, width_heads=1, mlps=1, closest_heads=2, **LINEAR),
            "most-freq": dict(layers=3, cat_heads=1, width_heads=1, mlps=1, closest_heads=1, **LINEAR),
        },
        dict(lr=0.1, tau_init=3.0, tau_end=0.05, batch=64),
    ),
    # wider: two width, two closest heads and two MLPs per layer (most-freq and double-hist)
    "closest-wide": (
        {
            t: dict(
                layers=3, cat_heads=1, width_heads=2, closest_heads=2, mlps=2, num_heads=1, num_mlps=1, **LINEAR
            )
            for t in CONFIGS
        },
        dict(lr=0.1, tau_init=3.0, tau_end=0.05, batch=64),
    ),
    # the authors' released runs, task by task (their run directories name the configuration:
    # headsc{C}headsn{N}nlayers{L}cmlps{M}nmlps{K}): C closest heads (their categorical heads attend
    # to the closest selected key), N width heads (their count-only numerical heads), M + K MLPs
    # (our width heads are categorical, so their numerical MLPs become categorical ones), the linear
    # readout; batch 512, lr 0.05, temperature 3 -> 0.01 as their args.json. Dyck has no released
    # run here: the size of their sort run.
    "authors": (
        {
            t: dict(layers=L, cat_heads=0, width_heads=N, closest_heads=C, mlps=M + K, **LINEAR)
            for t, (C, N, L, M, K) in {
                "hist": (2, 2, 1, 1, 1),
                "reverse": (4, 4, 3, 1, 1),
                "double-hist": (2, 2, 3, 1, 1),
                "sort": (4, 4, 3, 2, 2),
                "most-freq": (4, 4, 3, 2, 2),
                "dyck-1": (4, 4, 3, 2, 2),
                "dyck-2": (4, 4, 3, 2, 2),
            }.items()
        },
        dict(lr=0.05, tau_init=3.0, tau_end=0.01, batch=512),
    ),
    # the linear readout on the 3-layer NUM model for every task (hist: its 1-layer model)
    "linear": (
        {t: {**(CONFIGS[t] if t == "hist" else NUM), **LINEAR} for t in CONFIGS},
        dict(lr=0.1, tau_init=3.0, tau_end=0.05, batch=64),
    ),
}
# <preset>-noisy: the same with full-scale Gumbel noise (train's gumbel=1.0; its default 0.1). Task by
# task: at `linear` 3000 steps x 4 restarts on CPU it raised double-hist, sort and most-freq and
# lowered reverse a lot (README)
PRESETS.update({f"{k}-noisy": (c, {**t, "gumbel": 1.0}) for k, (c, t) in PRESETS.items()})
BUDGET = {  # steps and restarts per task (the default of --steps / --restarts)
    "hist": (600, 4),
    "reverse": (1000, 12),
    "double-hist": (1000, 16),
    "sort": (1000, 16),
    "most-freq": (1000, 16),
    "dyck-1": (800, 6),
    "dyck-2": (800, 6),
}
OUT = Path(__file__).parent / "results"
# the last (argmax) test accuracy of the training logs the authors released (seed 0 of their 3-layer
# runs), princeton-nlp/TransformerPrograms scripts/output/rasp/<task>/vocab8maxlen8/transformer_program/
# <config>/s0/results.csv -- not the paper's Table 1 (not available offline); None: no such log
AUTHORS_LOG = {
    "sort": (0.9987510927938055, "sort/…/headsc4headsn4nlayers3cmlps2nmlps2/s0/results.csv"),
    "reverse": (0.9786436867740727, "reverse/…/headsc4headsn4nlayers3cmlps1nmlps1/s0/results.csv"),
    "most-freq": (0.7475963548198311, "most_freq/…/headsc4headsn4nlayers3cmlps2nmlps2/s0/results.csv"),
}


def _stem(task: str, seed: int, preset: str) -> str:
    return f"{task}-{seed}" if preset == "cpu" else f"{task}-{seed}-{preset}"


def _keep_selected(row: dict) -> None:
    """Split restarts: the selected restart's weights and program take the run's name (restart k
    writes ``<stem>-r<k>``, restart 0 ``<stem>``); the other restarts' files go."""
    base = OUT / "rasp" / _stem(row["task"], row["seed"], row["preset"])

    def files(k: int) -> list[Path]:
        return [base.with_name(f"{base.name}{f'-r{k}' if k else ''}{ext}") for ext in (".safetensors", ".json")]

    chosen = row["selected"]["restart"]
    for k in range(1, row["restarts"]):
        if k != chosen:
            for f in files(k):
                f.unlink(missing_ok=True)
    if chosen:
        for src, dst in zip(files(chosen), files(0)):
            if src.exists():
                src.replace(dst)
            else:  # no program: extraction refused the selected model
                dst.unlink(missing_ok=True)


def run(
    task: str, seed: int, steps: int, restarts: int, preset: str = "cpu", device: str = "cpu", first: int = 0
) -> dict:
    torch.set_num_threads(1)  # tiny matrices: threads only contend (3x faster on the shared 2-core box)
    configs, training = PRESETS[preset]
    load = os.getloadavg()[0]
    t0 = time.time()
    res = train(
        task, seed=seed, steps=steps, restarts=restarts, first_restart=first, device=device, **training, **configs[task]
    )
    train_s = time.time() - t0
    module = res.model.discrete()
    stem = _stem(task, seed, preset) + (f"-r{first}" if first else "")
    (OUT / "rasp").mkdir(parents=True, exist_ok=True)
    save_file(  # before extraction: a model it refuses is kept for a look
        {k: v.contiguous() for k, v in module.state_dict().items()},
        str(OUT / "rasp" / f"{stem}.safetensors"),
    )
    test = make_split(TASKS[task], 1000, seed + 20_000)  # the test split train() scores
    n = right = prog_right = agree = 0
    try:
        ex = extract(capture(module, (test[max(test)][0][:2],), {}).gm)
    except Exception as exc:  # noqa: BLE001 - reported in the row; the other tasks go on
        ex, error = None, f"{type(exc).__name__}: {exc}"
    for x, y in test.values():
        model_pred = predictions(module, x)
        n += y.numel()
        right += int((model_pred == y).sum())
        if ex is None:
            continue
        prog_pred = torch.tensor(
            [[0 if v is None else v for v in rasp.evaluate(ex.program, row)] for row in x.tolist()]
        ).view_as(y)
        prog_right += int((prog_pred == y).sum())
        agree += int((prog_pred == model_pred).sum())
    if ex is not None:
        error = None
        doc = f"{task}, seed {seed}"
        rasp.save_json(OUT / "rasp" / f"{stem}.json", ex.program, ex.vocab, ex.max_len, doc=doc)
    t = TASKS[task]
    walk = rasp.walk(ex.program) if ex else []
    return {
        "task": task,
        "seed": seed,
        "steps": steps,
        "restarts": restarts,
        "selected": {"restart": res.restart, "step": res.step},
        "preset": preset,
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "config": configs[task],
        "training": training,
        "data": {"vocab": t.vocab, "lengths": [t.min_len, t.max_len], "test_tokens": n},
        "val_accuracy": res.val_accuracy,
        "model_accuracy": right / n,
        "program_accuracy": prog_right / n if ex else None,
        "agreement": agree / n if ex else None,
        "extract_error": error,
        "paper_accuracy": t.paper_accuracy,
        "authors_log_accuracy": AUTHORS_LOG.get(task, (None, None))[0],
        "authors_log_source": AUTHORS_LOG.get(task, (None, None))[1],
        "variables": ex.n_variables if ex else None,
        "used": ex.n_used if ex else None,
        # numerical heads (means) the extracted, pruned program reads
        "numerical_used": sum(isinstance(e, rasp.Aggregate) and e.numerical for e in walk),
        # categorical Aggregates the program reads whose keys are not the indices (key heads)
        "key_used": sum(
            isinstance(e, rasp.Aggregate)
            and not e.numerical
            and isinstance(e.selector, L.Select)
            and e.selector.keys is not L.indices
            for e in walk
        ),
        # categorical Aggregates over a Closest selector (closest heads)
        "closest_used": sum(isinstance(e, rasp.Aggregate) and isinstance(e.selector, L.Closest) for e in walk),
        "train_seconds": round(train_s, 1),
        "load_average": round(load, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tasks", nargs="*", default=list(TASKS))
    ap.add_argument("--steps", type=int, default=None, help="default: BUDGET")
    ap.add_argument("--restarts", type=int, default=None, help="default: BUDGET")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--preset", choices=list(PRESETS), default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1, help="trainings run in parallel processes")
    ap.add_argument(
        "--split-restarts", action="store_true", help="one job per restart; the best validation accuracy is kept"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    todo = []
    for task in args.tasks:
        for seed in args.seeds:
            steps, restarts = args.steps or BUDGET[task][0], args.restarts or BUDGET[task][1]
            if args.split_restarts:
                todo += [(task, seed, steps, 1, args.preset, args.device, r) for r in range(restarts)]
            else:
                todo.append((task, seed, steps, restarts, args.preset, args.device, 0))
    rows = []
    if args.jobs > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
            futures = {pool.submit(run, *job): job for job in todo}
            for f in as_completed(futures):
                if f.exception() is not None:  # one failed training does not lose the others
                    print(f"FAILED {futures[f][:2]}: {f.exception()!r}", flush=True)
                    continue
                print(json.dumps(f.result()), flush=True)
                rows.append(f.result())
    else:
        for job in todo:
            row = run(*job)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.split_restarts:  # per task and seed: the restart with the best validation accuracy
        best: dict[tuple, dict] = {}
        for r in rows:
            k = (r["task"], r["seed"])
            if k not in best or (r["val_accuracy"], -r["selected"]["restart"]) > (
                best[k]["val_accuracy"],
                -best[k]["selected"]["restart"],
            ):
                best[k] = r
        for r in best.values():
            r["restarts"] = sum((x["task"], x["seed"]) == (r["task"], r["seed"]) for x in rows)
            r["split_restarts"] = True
            _keep_selected(r)
        rows = list(best.values())
    OUT.mkdir(exist_ok=True)
    path = OUT / "rasp_train.json"
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    key = lambda r: (r["task"], r["seed"], r.get("preset", "cpu"))  # noqa: E731
    keep = [r for r in old if key(r) not in {key(n) for n in rows}]
    meta = {
        "device": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    path.write_text(json.dumps({**meta, "rows": keep + rows}, indent=2))


if __name__ == "__main__":
    main()
