"""docs/planner.md: optimize(max_error=...) on the real MiniLM against every candidate applied uniformly."""

from __future__ import annotations

from docs_gen.common import GOALS, columns, fixed, mb, met, num, pct, table, times

PLAN = "plan-minilm-cpu.json"


def render_plan(data: dict) -> str:
    p = data[PLAN]
    rows = p["rows"]
    exact = next(r for r in rows if r["row"] == "exact")
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["row"], "–", "–", "–", "–", "–", "–", r["error"][:80]])
            continue
        chosen = ", ".join(f"{k} ×{v}" for k, v in sorted(r.get("chosen", {}).items()))
        body.append([
            r["row"], fixed(r["unseen_cosine"], 4), pct(r["unseen_neighbours"]),
            pct(r.get("unseen_neighbours_without_pair")), mb(r["weight_bytes"]),
            pct(r.get("memory_saving")) if "memory_saving" in r else "–",
            times(r.get("speedup")) if "speedup" in r else "–",
            chosen + (f" (held-back error {num(r['held_back_cos_error'])})" if r.get("held_back_cos_error") else ""),
        ])  # fmt: skip
    goal_b, goal_x = GOALS["plan_vs_uniform"]
    at_goal = next((r for r in rows if r.get("budget") == goal_b), None)
    ratio = at_goal.get("ratio_vs_best_uniform") if at_goal else None
    hh = next((r for r in rows if r["row"] == "uniform linear_hedgehog"), None)
    g128 = next((r for r in rows if r["row"] == "uniform int4_g128"), None)
    hh_goal = (GOALS["hedgehog_cosine"], GOALS["hedgehog_top1"])
    cand = ""
    if hh and "unseen_cosine" in hh:
        cand += (f"- hedgehog on all layers, unseen prose: cosine {fixed(hh['unseen_cosine'], 4)}, neighbours without the "
                 f"pair {pct(hh.get('unseen_neighbours_without_pair'))} (goal ≥ {hh_goal[0]} and ≥ {pct(hh_goal[1], 0)}): "
                 f"{met(hh['unseen_cosine'] >= hh_goal[0] and (hh.get('unseen_neighbours_without_pair') or 0) >= hh_goal[1])}\n")  # fmt: skip
    if g128 and "unseen_cosine" in g128:
        cand += (f"- int4 g128 on all linears: cosine {fixed(g128['unseen_cosine'], 4)} (goal ≥ "
                 f"{GOALS['int4_g128_cos_min']}): {met(g128['unseen_cosine'] >= GOALS['int4_g128_cos_min'])}\n")  # fmt: skip
    return f"""
Real all-MiniLM-L6-v2 on the CPU (eager backend), metric: one minus the cosine of mean-pooled embeddings,
objective: **{p['objective']}**. Calibration: {p['calibration']} sentences in batches of similar length
({p['split']['fit']} batches to measure the candidates, {p['split']['held_back']} held back to check each plan).
Every row is then measured on {p['held_out']} sentences written for this bench (40 paraphrase pairs) that no
test and no calibration set uses. Candidates: {', '.join(p['candidates'])}; measuring all of them at every
site took {num(p['measure_s'])} s, each budget then {span_s(rows)} s more.

{columns([
    ("cosine", "mean cosine of the embeddings to the fp32 model's on the unseen sentences"),
    ("neighbours", "the share of sentences whose nearest neighbour is unchanged"),
    ("without pair", "the same with each sentence's own paraphrase left out (the harder, more telling test)"),
    ("weights", "bytes of the graph's parameters and buffers"),
    ("saved", "weights saved against the exact model"),
    ("speed-up", f"CPU latency of the exact model ({num(exact['latency_ms'])} ms for the unseen set) over the row's "
                 "(2 cores): the eager backend runs the low-bit formats as reference ops (dequantize, then matmul), "
                 "so here they are slower; their kernels are on the Triton backend"),
    ("plan", "the candidates the planner chose (sites each) and the plan's error on the held-back calibration batches"),
])}

{table(["row", "cosine", "neighbours", "without pair", "weights", "saved", "speed-up", "plan"], body)}

Goal: at a {pct(goal_b, 0)} budget the plan saves ≥ {goal_x}× what the best uniform pass within the same
budget (on the unseen sentences) saves: {met(ratio is not None and ratio >= goal_x)} ({times(ratio)};
{at_goal.get('best_uniform_within_budget') if at_goal else '–'}). A cosine budget does not bound the harder
neighbour test: compare the "without pair" column of the plans with the uniform rows.

Candidates measured alone on unseen prose (issue 21's goals):
{cand}"""


def span_s(rows: list[dict]) -> str:
    t = [r["plan_s"] for r in rows if "plan_s" in r]
    return f"{num(min(t))}–{num(max(t))}" if t else "–"
