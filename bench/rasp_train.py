"""Train Transformer Programs on the tasks of Friedman et al. 2023 and check the extracted programs.

    nice -n 10 .venv/bin/python bench/rasp_train.py hist reverse --seeds 0   # steps/restarts: BUDGET

Per task and seed: ``restarts`` trainings, the one with the best validation accuracy kept (see
``train``); accuracy of its discrete model on 1000 test inputs (lengths as the paper's data, all
tokens counted), agreement of the RASP program that ``rasp.extract`` reads from the captured
weights with the model (must be 100%), how many numerical heads that program reads, wall time and the load average at the start (shared machine). Weights go to bench/results/rasp/<task>-<seed>.safetensors, the table to
bench/results/rasp_train.json, the printed programs next to the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from tcomp import rasp
from tcomp.capture import capture
from tcomp.models.transformer_program import TASKS, make_split, predict, train
from tcomp.rasp import language as L
from tcomp.rasp.extract import extract

# layers / heads / MLPs per task (small: CPU budget; the paper uses 3 layers of 4 categorical and
# 4 numerical heads and 2 MLPs each) and training settings; restarts are selected on validation.
# NUM: one numerical head and one numerical MLP per layer besides the categorical parts (issue 9)
NUM = dict(layers=3, cat_heads=1, width_heads=1, mlps=1, num_heads=1, num_mlps=1)
# key heads (query, key and value variables; issue 9) measured lower at 1000 x 16, so no task uses
# them yet: sort 61.04 % with dict(layers=3, cat_heads=0 or 1, width_heads=1, mlps=1, key_heads=1)
# (vs 62.51 % NUM; it learns rank = SelectorWidth(tokens <= tokens), then the token whose rank is
# index + 1, which has no value where tokens repeat), 51.87 % with NUM plus key_heads=1; most-freq
# 32.60 % (cat_heads=0) / 36.97 % (cat_heads=1) vs 55.87 %
CONFIGS = {
    "hist": dict(layers=1, cat_heads=0, width_heads=1, mlps=0),
    "reverse": dict(layers=2, cat_heads=1, width_heads=1, mlps=1),
    "double-hist": NUM,
    "sort": NUM,
    "most-freq": dict(layers=3, cat_heads=1, width_heads=1, mlps=1),  # NUM measured lower: 52.4 vs 55.9 %
    "dyck-1": dict(layers=3, cat_heads=1, width_heads=1, mlps=1),
    "dyck-2": dict(layers=3, cat_heads=1, width_heads=1, mlps=1),
}
TRAINING = dict(lr=0.1, tau_init=3.0, tau_end=0.05, batch=64)
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


def run(task: str, seed: int, steps: int, restarts: int) -> dict:
    load = os.getloadavg()[0]
    t0 = time.time()
    res = train(task, seed=seed, steps=steps, restarts=restarts, **TRAINING, **CONFIGS[task])
    train_s = time.time() - t0
    module = res.model.discrete()
    test = make_split(TASKS[task], 1000, seed + 20_000)  # the test split train() scores
    ex = extract(capture(module, (test[max(test)][0][:2],), {}).gm)
    n = right = prog_right = agree = 0
    for x, y in test.values():
        with torch.no_grad():
            model_pred = predict(module(x))
        prog_pred = torch.tensor(
            [[0 if v is None else v for v in rasp.evaluate(ex.program, row)] for row in x.tolist()]
        ).view_as(y)
        n += y.numel()
        right += int((model_pred == y).sum())
        prog_right += int((prog_pred == y).sum())
        agree += int((prog_pred == model_pred).sum())
    (OUT / "rasp").mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in module.state_dict().items()},
        str(OUT / "rasp" / f"{task}-{seed}.safetensors"),
    )
    (OUT / "rasp" / f"{task}-{seed}.py").write_text(
        rasp.to_source(ex.program, ex.vocab, ex.max_len, doc=f"{task}, seed {seed}")
    )
    t = TASKS[task]
    return {
        "task": task,
        "seed": seed,
        "steps": steps,
        "restarts": restarts,
        "selected": {"restart": res.restart, "step": res.step},
        "config": CONFIGS[task],
        "training": TRAINING,
        "data": {"vocab": t.vocab, "lengths": [t.min_len, t.max_len], "test_tokens": n},
        "val_accuracy": res.val_accuracy,
        "model_accuracy": right / n,
        "program_accuracy": prog_right / n,
        "agreement": agree / n,
        "paper_accuracy": t.paper_accuracy,
        "variables": ex.n_variables,
        "used": ex.n_used,
        # numerical heads (means) the extracted, pruned program reads
        "numerical_used": sum(isinstance(e, rasp.Aggregate) and e.numerical for e in rasp.walk(ex.program)),
        # categorical Aggregates the program reads whose keys are not the indices (key heads)
        "key_used": sum(
            isinstance(e, rasp.Aggregate)
            and not e.numerical
            and getattr(e.selector, "keys", None) is not L.indices
            for e in rasp.walk(ex.program)
        ),
        "train_seconds": round(train_s, 1),
        "load_average": round(load, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tasks", nargs="*", default=list(TASKS))
    ap.add_argument("--steps", type=int, default=None, help="default: BUDGET")
    ap.add_argument("--restarts", type=int, default=None, help="default: BUDGET")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    args = ap.parse_args()
    torch.set_num_threads(1)  # tiny matrices: threads only contend (3x faster on the shared 2-core box)
    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            steps, restarts = BUDGET[task]
            row = run(task, seed, args.steps or steps, args.restarts or restarts)
            print(json.dumps(row))
            rows.append(row)
    OUT.mkdir(exist_ok=True)
    path = OUT / "rasp_train.json"
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    keep = [r for r in old if (r["task"], r["seed"]) not in {(n["task"], n["seed"]) for n in rows}]
    meta = {
        "device": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    path.write_text(json.dumps({**meta, "rows": keep + rows}, indent=2))


if __name__ == "__main__":
    main()
