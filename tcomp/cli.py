"""The ``tcomp`` command (typer + rich).

    tcomp passes                                  registered passes, their contracts and options
    tcomp plan --target T [--passes P | --plan F]  the plan (JSON) optimize would run, checked
    tcomp inspect SPEC                            attention sites, spelling, shapes, cost by sequence length
    tcomp optimize SPEC --target T [--passes P | --plan F] -o DIR   optimize, write the artifact folder
    tcomp verify DIR [--model SPEC]               re-check hashes (and outputs against the source model)
    tcomp run DIR --input FILE [-o OUT]           run an artifact on inputs stored as safetensors
    tcomp bench SPEC --target T                   median latency: tcomp vs eager vs torch.compile
    tcomp generate SPEC --prompt TEXT             compile a decoder and generate, with tokens/s

Exit codes: 0 success, 1 a pass was rolled back or a bench variant failed (output still written),
2 bad input or capture failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import time
import warnings
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="tcomp: a verified compiler for PyTorch transformers."
)
console = Console()
SPEC_HELP = (
    "zoo name (e.g. bert, minilm, default), package.module:factory, a .pt2 file or a Hugging Face folder"
)


def _quiet() -> None:
    logging.getLogger("torch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


@contextlib.contextmanager
def _steps(title: str, quiet: bool = False):
    """A progress line on stderr (spinner, current step, elapsed time) for long work; yields the
    callback that names each step as it starts. Nothing is drawn with --json or off a terminal."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    err = Console(stderr=True)
    if quiet or not err.is_terminal:
        yield lambda _name: None
        return
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True
    ) as bar:
        task = bar.add_task(title)
        yield lambda name: bar.update(task, description=f"{title}: {name}")


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}", soft_wrap=True)  # one line, whatever the width
    raise typer.Exit(2)


@app.command()
def passes(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List the registered passes, their contracts and their options (types, defaults, ranges)."""
    import tcomp
    from tcomp.options import describe

    rows = [
        {
            "name": p.name,
            "contract": p.contract.describe(),
            "default": p.default,
            "description": p.description,
            "after": list(p.after),
            "before": list(p.before),
            "options": describe(p.options),
        }
        for p in tcomp.registered_passes().values()
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    t = Table(title="passes")
    for col in ("name", "contract", "default", "description", "options"):
        t.add_column(col)
    for r in rows:
        opts = ", ".join(f"{o['name']}={o['default']!r}" for o in r["options"])
        t.add_row(r["name"], r["contract"], "yes" if r["default"] else "", r["description"], opts)
    console.print(t)


ON_FAILURE_HELP = (
    "a pass you named that ends rolled back or skipped everywhere: raise (stop, as any error: exit 2), warn or skip (go on; "
    "the exit code is 1 when a pass was rolled back)"
)
OPTION_HELP = "a pass option, PASS.OPTION=VALUE (VALUE read as JSON, else as text); repeat it"


def _pass_options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``["tokens.merge.r=2", ...]`` -> ``{"tokens.merge": {"r": 2}}`` (values parsed as JSON)."""
    from tcomp.errors import InputError

    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        name, dot, opt = key.strip().rpartition(".")
        if not (eq and dot and name and opt):
            raise InputError(f"--option {pair!r}: write PASS.OPTION=VALUE, e.g. tokens.merge.r=2")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        out.setdefault(name, {})[opt] = value
    return out


def _build_plan(target: str, passes: str, backend: str, plan_file: str, options: list[str] | None = None):
    """The Plan of a command line: ``--plan FILE`` (Plan JSON, or a list of steps run for
    ``--target``), else the comma-separated ``--passes`` (empty: the default pipeline) with the
    ``--option`` values of each."""
    from tcomp.errors import InputError
    from tcomp.plan import Plan, build_plan

    if plan_file:
        from pathlib import Path

        try:
            data = json.loads(Path(plan_file).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the plan {plan_file}: {exc}") from exc
        if isinstance(data, dict):
            return Plan.from_json(data)
        return build_plan(target, data, backend or None)
    opts = _pass_options(options or [])
    names = [p.strip() for p in passes.split(",") if p.strip()]
    for name in opts:
        if name not in names:
            raise InputError(f"--option for {name!r}, which is not in --passes {','.join(names) or '(empty)'}")
    specs = [(n, opts.get(n, {})) for n in names] or None
    return build_plan(target, specs, backend or None)


@app.command()
def plan(
    spec: str = typer.Argument(None, help=f"with --max-error: the model to plan for ({SPEC_HELP})"),
    target: str = typer.Option("cpu", help="cpu, a100, h100, h200"),
    passes: str = typer.Option("", help="comma-separated pass names (default: the default pipeline)"),
    backend: str = typer.Option("", help="backend (default: the target's)"),
    plan_file: str = typer.Option("", "--plan", help="a plan JSON file to check (from Plan.to_json)"),
    option: list[str] = typer.Option([], "--option", "-O", help=OPTION_HELP),
    max_error: float = typer.Option(None, "--max-error", help="choose the passes per site under this error budget"),
    metric: str = typer.Option("rel", help="rel, cos or neighbours (with --max-error)"),
    pool: str = typer.Option(None, help="mean, cls or none: the vector cos/neighbours compare (default mean)"),
    objective: str = typer.Option("latency", help="latency or memory (with --max-error)"),
    candidates: str = typer.Option("", help="comma-separated planner candidates (default: the target's menu)"),
    batches: int = typer.Option(8, help="calibration batches drawn like the model's example inputs (--max-error)"),
    seed: int = typer.Option(0),
    out: str = typer.Option("", "-o", "--out", help="write the plan JSON here instead of printing it"),
) -> None:
    """Print the plan ``tcomp optimize`` would run, as JSON: names resolved, options validated and
    filled with their defaults, passes ordered, the backend's steps appended. Edit it and give it
    back with ``--plan``. With ``--max-error`` and a model, the planner chooses the passes per site
    (tcomp.optimize(max_error=...)) on calibration batches drawn like the model's example inputs,
    prints its choice and checks, and writes the chosen plan."""
    import tcomp  # noqa: F401 - registers passes and backends
    from tcomp.errors import InputError, TcompError

    try:
        if max_error is None:
            text = _build_plan(target, passes, backend, plan_file, option).to_json()
        else:
            if not spec or passes or plan_file or option:
                raise InputError("--max-error chooses the passes for a model: give SPEC, and no --passes/--plan/--option")
            text = _planned(spec, target, backend, max_error, metric, pool, objective, candidates, batches, seed)
        if out:
            from pathlib import Path

            Path(out).write_text(text)
            console.print(f"wrote {out}")
        else:
            typer.echo(text)
    except TcompError as exc:
        _fail(exc)


def _planned(spec, target, backend, max_error, metric, pool, objective, candidates, batches, seed) -> str:
    """Plan ``spec`` under ``max_error`` (see ``tcomp plan``); the chosen plan as JSON."""
    import inspect as pyinspect

    import tcomp
    from tcomp.spec import load_spec
    from tcomp.verify import sample_inputs

    loaded = load_spec(spec)
    # calibration batches are keyword dicts: positional example inputs are bound to their names
    named = dict(pyinspect.signature(loaded.model.forward).bind(*loaded.args, **loaded.kwargs).arguments)
    calib = [k for _a, k in sample_inputs((), named, batches + 1, seed + 1)[1:]]
    with _steps(f"planning {loaded.name} under max_error={max_error} ({metric})") as progress:
        om = tcomp.optimize(
            loaded.model, named, target=target, backend=backend or None, calibration=calib,
            max_error=max_error, metric=metric, pool=pool, objective=objective, seed=seed, progress=progress,
            candidates=[c.strip() for c in candidates.split(",") if c.strip()] or None,
        )  # fmt: skip
    from tcomp.report.model import planner_tables

    planner_tables(console, om.report.planner)
    return om.plan.to_json()


@app.command()
def inspect(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    target: str = typer.Option("cpu", help="target for the roofline: cpu, a100, h100, h200"),
    passes: str = typer.Option(
        "", help="comma-separated passes after canonicalize; shows each site's cost order before/after"
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show the attention sites of a model (spelling, shapes), their cost by sequence length and the
    growth of each site's cost in N (before and after ``--passes``). With ``--passes``, also the
    cost rows of the graph after them, per site kind (linear attention, token merge, quantized
    linears, ...: every dialect op has a cost formula), with each kind's growth in N."""
    import tcomp
    from tcomp.cost import kind_orders, site_orders
    from tcomp.errors import TcompError
    from tcomp.spec import load_spec

    _quiet()
    extra = [p.strip() for p in passes.split(",") if p.strip()]
    try:
        loaded = load_spec(spec)
        with console.status("capturing and canonicalizing"):
            om = tcomp.optimize(
                loaded.model,
                loaded.args,
                target=target,
                passes=["canonicalize"],
                verify=False,
                example_kwargs=loaded.kwargs,
            )
        after = om
        if extra:
            with console.status(f"applying {', '.join(extra)}"):
                after = tcomp.optimize(
                    loaded.model, loaded.args, target=target, passes=["canonicalize", *extra],
                    verify=False, example_kwargs=loaded.kwargs, on_failure="skip",  # the table shows what changed
                )  # fmt: skip
    except TcompError as exc:
        _fail(exc)
    rep = om.report
    before_o = site_orders(om.graph_module)
    after_o = site_orders(after.graph_module) if extra else before_o
    unknown = {"kind": "?", "flops": "no cost formula"}
    orders = [{"layer": i, "before": before_o[i], "after": after_o.get(i, unknown)} for i in sorted(before_o)]
    kinds_before = kind_orders(om.graph_module)
    kinds_after = kind_orders(after.graph_module) if extra else None
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "model": loaded.name,
                    "sites": rep.sites,
                    "cost": rep.cost,
                    "cost_symbolic": rep.cost_symbolic,
                    "cost_orders": kinds_before,
                    "site_orders": orders,
                    "cost_after": after.report.cost if extra else None,
                    "cost_symbolic_after": after.report.cost_symbolic if extra else None,
                    "cost_orders_after": kinds_after,
                },
                indent=2,
                default=str,
            )
        )
        return
    rep.model = loaded.name
    console.print(rep.render())
    for kind, expr in rep.cost_symbolic.items():
        console.print(f"[bold]{kind}[/bold]: {_orders_text(kinds_before.get(kind))}{expr}", soft_wrap=True)
    if extra:
        applied = ", ".join(extra)
        console.print(_cost_rows_table(f"cost after {applied} (roofline on target)", after.report.cost))
        for kind, expr in after.report.cost_symbolic.items():
            console.print(
                f"[bold]{kind}[/bold] after {applied}: {_orders_text(kinds_after.get(kind))}{expr}",
                soft_wrap=True,
            )
    for o in orders:
        line = f"site {o['layer']}: {o['before']['kind']} {o['before']['flops']} FLOPs"
        if extra:
            line += f" -> {o['after']['kind']} {o['after']['flops']}"
        console.print(line)


def _orders_text(orders: dict[str, str] | None) -> str:
    """``"O(N) FLOPs, O(N) bytes; "`` for one site kind (empty when unknown)."""
    return f"{orders['flops']} FLOPs, {orders['bytes']} bytes; " if orders else ""


def _cost_rows_table(title: str, rows: list[dict[str, Any]]) -> Table:
    """Rows of ``tcomp.cost.cost_table`` (one per site kind and sequence length) as a table."""
    t = Table(title=title)
    for col in ("kind", "seq", "batch", "gflops", "mb", "roofline_us"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["kind"], str(r["seq"]), str(r["batch"]), f"{r['gflops']:.3g}", f"{r['mb']:.3g}",
                  f"{r['roofline_us']:.3g}")  # fmt: skip
    return t


@app.command()
def optimize(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    target: str = typer.Option("cpu", help="cpu, a100, h100, h200"),
    passes: str = typer.Option("", help="comma-separated pass names (default: the default pipeline, exact and FP-equivalent passes)"),
    backend: str = typer.Option("", help="backend (default: the target's)"),
    plan_file: str = typer.Option("", "--plan", help="a plan JSON file to run (tcomp plan, Plan.to_json, an artifact's plan.json)"),
    option: list[str] = typer.Option([], "--option", "-O", help=OPTION_HELP),
    output: str = typer.Option(..., "-o", "--output", help="artifact folder to write"),
    no_verify: bool = typer.Option(False, "--no-verify", help="skip checking each pass against its contract"),
    on_failure: str = typer.Option("raise", "--on-failure", help=ON_FAILURE_HELP),
    strict: bool = typer.Option(False, "--strict", help="an error when attention stays out of every pass's reach"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Optimize a model for a target and write the artifact folder with the report. A causal LM
    compiled for generation writes a decoder folder (prefill and decode graphs, one weights file);
    its --json output is {"prefill": report, "decode": report}."""
    import tcomp
    from tcomp.errors import TcompError
    from tcomp.spec import load_spec

    _quiet()
    try:
        the_plan = _build_plan(target, passes, backend, plan_file, option)  # checked before the model loads
        loaded = load_spec(spec)
        with _steps(f"optimizing {loaded.name} for {the_plan.target.name}", quiet=as_json) as step:
            om = tcomp.optimize(
                loaded.model,
                loaded.args,
                passes=the_plan,
                verify=not no_verify,
                example_kwargs=loaded.kwargs,
                progress=step,
                on_failure=on_failure,
                strict=strict,
            )
        reports = _graph_reports(om)
        for graph, rep in reports.items():
            rep.model = f"{loaded.name} ({graph})" if graph else loaded.name
        manifest = om.save(output)
    except TcompError as exc:
        _fail(exc)
    if as_json:
        both = {g: r.to_dict() for g, r in reports.items()}
        typer.echo(om.report.to_json() if len(reports) == 1 else json.dumps(both, indent=2, default=str))
    else:
        for rep in reports.values():
            console.print(rep.render())
        _warn_unmatched(reports.values())
        console.print(f"wrote {output} (manifest: {manifest})")
    if any(r.status == "rolled_back" for rep in reports.values() for r in rep.passes):
        raise typer.Exit(1)


def _warn_unmatched(reports: Any) -> None:
    """A warning line per attention site canonicalize could not take (once per module)."""
    seen = {}
    for rep in reports:
        for u in getattr(rep, "unmatched", []):
            seen.setdefault(u["module"], u["why"])
    for module, why in seen.items():
        console.print(f"[yellow]warning:[/yellow] attention at {module} stays softmax, out of every pass's reach: {why}",
                      soft_wrap=True)  # fmt: skip


def _graph_reports(om: Any) -> dict[str, Any]:
    """The report of each graph ``tcomp.optimize`` compiled: ``{"": report}`` for one graph,
    ``{"prefill": ..., "decode": ...}`` for a decoder compiled for generation."""
    decode = getattr(om, "decode_report", None)
    return {"": om.report} if decode is None else {"prefill": om.report, "decode": decode}


@app.command()
def verify(
    folder: str = typer.Argument(..., help="artifact folder written by tcomp optimize"),
    model: str = typer.Option("", "--model", help="source model SPEC to compare outputs against"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Re-check an artifact: every file against the manifest's sha256 and, given the source model,
    the artifact's outputs against it (relative error on the model's example inputs)."""
    import tcomp
    from tcomp.artifacts import check
    from tcomp.errors import TcompError
    from tcomp.spec import load_spec
    from tcomp.verify import rel_error

    _quiet()
    result: dict = {"folder": folder}
    try:
        result["bad_files"] = check(folder)
        if result["bad_files"]:
            raise TcompError(f"files do not match the manifest: {', '.join(result['bad_files'])}")
        loaded = tcomp.load(folder)
        if model:
            src = load_spec(model)
            import torch

            with torch.no_grad():
                result["rel_error"] = rel_error(
                    loaded(*src.args, **src.kwargs), src.model(*src.args, **src.kwargs)
                )
    except (TcompError, FileNotFoundError) as exc:
        _fail(exc)
    ok = result.get("rel_error", 0.0) <= 1e-4
    if as_json:
        typer.echo(json.dumps({**result, "ok": ok}))
    else:
        console.print(
            "hashes ok; "
            + (
                f"relative error vs source {result['rel_error']:.3g}"
                if "rel_error" in result
                else "no source model given"
            )
        )
    if not ok:
        raise typer.Exit(1)


@app.command()
def run(
    folder: str = typer.Argument(..., help="artifact folder written by tcomp optimize"),
    inputs: str = typer.Option(..., "--input", help="safetensors file of named inputs (keyword arguments)"),
    output: str = typer.Option("", "-o", "--output", help="write the output tensors here (safetensors)"),
) -> None:
    """Run an artifact on inputs stored as safetensors; print output shapes, optionally save them."""
    import torch.utils._pytree as pytree
    from safetensors.torch import load_file, save_file

    import tcomp
    from tcomp.errors import TcompError

    _quiet()
    try:
        loaded = tcomp.load(folder)
        kwargs = load_file(inputs)
        out = loaded.run_named(kwargs)
    except (TcompError, FileNotFoundError) as exc:
        _fail(exc)
    leaves, _ = pytree.tree_flatten_with_path(out)
    tensors = {
        pytree.keystr(p) or "output": t.detach().contiguous() for p, t in leaves if hasattr(t, "shape")
    }
    for name, t in tensors.items():
        console.print(f"{name}: {tuple(t.shape)} {t.dtype}")
    if output:
        save_file(tensors, output)


@app.command()
def bench(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    target: str = typer.Option("cpu", help="cpu, a100, h100, h200 (GPU targets run on CUDA when present)"),
    backend: str = typer.Option("", help="backend for tcomp (default: the target's)"),
    iters: int = typer.Option(20, min=1, help="timed calls per variant per round"),
    warmup: int = typer.Option(3, min=0, help="untimed calls per variant per round"),
    rounds: int = typer.Option(3, min=1, help="rounds; the variants are timed interleaved, round by round"),
    no_compile: bool = typer.Option(False, "--no-compile", help="leave torch.compile (inductor) out"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Median latency on the spec's example inputs: tcomp (the target's backend, exact passes)
    against eager and torch.compile (inductor), with ratios and each output's error vs eager."""
    import torch

    import tcomp
    from tcomp.errors import TcompError
    from tcomp.spec import load_spec
    from tcomp.targets import get_target

    _quiet()
    try:
        tgt = get_target(target)
        loaded = load_spec(spec)
        model, args, kwargs = loaded.model.eval(), loaded.args, loaded.kwargs
        if tgt.kind == "gpu" and torch.cuda.is_available():
            model, (args, kwargs) = model.cuda(), _to_device((args, kwargs), "cuda")
        variants: dict[str, Any] = {"eager": model}
        setup: dict[str, float] = {"eager": 0.0}
        with console.status(f"optimizing {loaded.name} for {tgt.name}"):
            t0 = time.perf_counter()
            om = tcomp.optimize(model, args, target=tgt, backend=backend or None, example_kwargs=kwargs)
            setup["tcomp"], variants["tcomp"] = time.perf_counter() - t0, om
    except TcompError as exc:
        _fail(exc)
    failed: dict[str, str] = {}
    if not no_compile:
        variants["torch.compile"] = torch.compile(model)  # compiled on the first (warm-up) call
    with torch.no_grad():
        outs = {}
        for name in list(variants):
            t0 = time.perf_counter()
            try:
                outs[name] = variants[name](*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - reported as a failed variant, never fatal
                failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                del variants[name]
                continue
            setup[name] = setup.get(name, 0.0) + time.perf_counter() - t0
        with console.status(f"timing {', '.join(variants)}"):
            times = _time_interleaved(variants, args, kwargs, iters=iters, warmup=warmup, rounds=rounds)
    result = _bench_result(loaded.name, tgt.name, om, times, outs, setup, failed)
    result.update(iters=iters, warmup=warmup, rounds=rounds)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        _bench_table(result)
    if failed or any(r.status == "rolled_back" for r in om.report.passes):
        raise typer.Exit(1)


def _to_device(tree: Any, device: str) -> Any:
    import torch.utils._pytree as pytree

    return pytree.tree_map(lambda x: x.to(device) if hasattr(x, "to") else x, tree)


def _time_interleaved(variants: dict, args: tuple, kwargs: dict, *, iters: int, warmup: int, rounds: int):
    """{variant: [ms per timed call]}, every variant timed in each round (load hits them alike)."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            for i in range(warmup + iters):
                sync()
                t0 = time.perf_counter()
                fn(*args, **kwargs)
                sync()
                if i >= warmup:
                    times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def _bench_result(model: str, target: str, om: Any, times: dict, outs: dict, setup: dict, failed: dict):
    from tcomp.verify import rel_error

    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for name, ms in med.items():
        rows.append(
            {
                "name": name,
                "median_ms": ms,
                "min_ms": min(times[name]),
                "vs_eager": med["eager"] / ms,  # > 1: faster than eager
                "vs_torch_compile": med["torch.compile"] / ms if "torch.compile" in med else None,
                "rel_error_vs_eager": rel_error(outs[name], outs["eager"]),
                "setup_s": setup[name],
            }
        )
    rows += [{"name": k, "error": v} for k, v in failed.items()]
    lowering = [r for r in om.report.passes if r.name.startswith("lower.")]
    return {
        "model": model,
        "target": target,
        "backend": lowering[0].name.removeprefix("lower.") if lowering else "eager",
        "passes": [{"name": r.name, "status": r.status, "error": r.error} for r in om.report.passes],
        "rows": rows,
    }


def _bench_table(result: dict) -> None:
    t = Table(title=f"{result['model']} on {result['target']} (tcomp backend: {result['backend']})")
    for col in (
        "variant",
        "median ms",
        "min ms",
        "vs eager",
        "vs torch.compile",
        "rel. error vs eager",
        "setup s",
    ):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for r in result["rows"]:
        if "error" in r:
            t.add_row(r["name"], "[red]failed[/red]", "", "", "", r["error"], "")
            continue
        vs_tc = r["vs_torch_compile"]
        t.add_row(
            r["name"],
            f"{r['median_ms']:.3f}",
            f"{r['min_ms']:.3f}",
            f"{r['vs_eager']:.2f}x",
            "" if vs_tc is None else f"{vs_tc:.2f}x",
            f"{r['rel_error_vs_eager']:.2e}",
            f"{r['setup_s']:.1f}",
        )
    console.print(t)
    console.print(
        f"median of {result['rounds']} x {result['iters']} calls per variant, timed interleaved; "
        "ratios > 1 mean faster; setup = optimize / first-call compile time"
    )


def _add_rasp() -> None:
    from tcomp.rasp.cli import rasp_app

    app.add_typer(rasp_app, name="rasp", help="RASP programs: extract from weights, compile to weights, run, show (print a stored program as Python)")


_add_rasp()


PASS_FIELDS = ("name", "status", "rewrites", "error", "tolerance", "reason")  # per pass in generate --json


@app.command()
def generate(
    spec: str = typer.Argument(..., help="a Hugging Face causal LM folder, a zoo decoder (gpt-rope, ...) or package.module:factory"),
    prompt: str = typer.Option("Once upon a time", "--prompt", help="text to continue"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n", min=1),
    target: str = typer.Option("cpu", help="cpu, a100, h100, h200"),
    passes: str = typer.Option("", help="comma-separated pass names (default: the default pipeline)"),
    option: list[str] = typer.Option([], "--option", "-O", help=OPTION_HELP),
    max_len: int = typer.Option(0, "--max-len", min=0, help="KV cache slots (default: prompt + new tokens - 1)"),
    kv_cache: str = typer.Option("model", "--kv-cache", help="KV cache format: model (its dtype) or int8 (BOUNDED)"),
    temperature: float = typer.Option(0.0, min=0.0, help="0: greedy; > 0: sample at this temperature"),
    top_k: int = typer.Option(0, "--top-k", min=0, help="sample among the k most likely tokens (0: all)"),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="sample from the smallest set of this probability"),
    seed: int = typer.Option(0, help="seed of sampling and of the verification draws"),
    no_verify: bool = typer.Option(False, "--no-verify", help="skip checking each pass against its contract"),
    on_failure: str = typer.Option("raise", "--on-failure", help=ON_FAILURE_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Compile a decoder (prefill and decode graphs over a static KV cache) and generate from a prompt:
    a progress bar of tokens, the text, and the tokens/s of the decode steps. Generation stops at
    the model's eos token (its generation config). Exit code 1 when a pass was rolled back."""
    import torch

    import tcomp
    from tcomp.errors import TcompError
    from tcomp.spec import load_decoder

    _quiet()
    try:
        the_plan = _build_plan(target, passes, "", "", option)
        loaded = load_decoder(spec, seed)
        ids = _encode(loaded, prompt)
        need = ids.shape[1] + max_new_tokens - 1  # the last token is chosen, never run
        if max_len and max_len < need:  # said before compiling, in the command's own terms
            raise typer.BadParameter(
                f"{ids.shape[1]} prompt tokens + {max_new_tokens} new need {need} KV-cache slots; "
                f"pass --max-len {need} or more (or leave it out), or fewer --max-new-tokens",
                param_hint="--max-len",
            )
        slots = max_len or need
        device = "cuda" if the_plan.target.kind == "gpu" and torch.cuda.is_available() else "cpu"
        model = loaded.model.to(device)
        t0 = time.perf_counter()
        with _steps(f"compiling {loaded.name} for {the_plan.target.name}", quiet=as_json) as step:
            fast = tcomp.optimize(
                model, {"input_ids": ids.to(device)}, passes=the_plan, verify=not no_verify, progress=step,
                decoder=True, max_len=slots, seed=seed, kv_cache=kv_cache, on_failure=on_failure,
            )  # fmt: skip
        compile_s = time.perf_counter() - t0
        out, times = _generate_with_bar(fast, ids.to(device), max_new_tokens, temperature, top_k, top_p, seed, as_json)
    except TcompError as exc:
        _fail(exc)
    new = out[0, ids.shape[1] :].tolist()
    decode_s = sum(times[1:])
    result = {
        "model": loaded.name,
        "target": the_plan.target.name,
        "kv_cache": kv_cache,
        "prompt_tokens": int(ids.shape[1]),
        "new_tokens": len(new),
        "text": _decode(loaded, new),
        "token_ids": new,
        "compile_seconds": round(compile_s, 3),
        "prefill_ms": round(1e3 * times[0], 3),
        "decode_ms_per_token": round(1e3 * decode_s / max(1, len(times) - 1), 3),
        "tokens_per_second": round((len(times) - 1) / decode_s, 2) if decode_s > 0 else None,
        "passes": {g: [{k: v for k, v in r.to_dict().items() if k in PASS_FIELDS} for r in rep.passes]
                   for g, rep in _graph_reports(fast).items()},  # fmt: skip
    }
    rolled_back = [f"{g}: {p['name']}" for g, ps in result["passes"].items() for p in ps if p["status"] == "rolled_back"]
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        console.print(f"[bold]{prompt}[/bold]{result['text']}", soft_wrap=True)
        console.print(
            f"{len(new)} tokens: prefill {result['prefill_ms']:.1f} ms, decode {result['decode_ms_per_token']:.2f} "
            f"ms/token = [bold]{result['tokens_per_second']} tokens/s[/bold] (compile {compile_s:.1f} s, "
            f"{the_plan.target.name})"
        )
        if rolled_back:
            console.print(f"[yellow]rolled back:[/yellow] {', '.join(rolled_back)}", soft_wrap=True)
    if rolled_back:
        raise typer.Exit(1)


def _encode(loaded: Any, prompt: str):
    import torch

    if loaded.tokenizer is not None:
        ids = loaded.tokenizer(prompt, return_tensors="pt")["input_ids"]
    else:  # byte-level: one token per UTF-8 byte, folded into the vocabulary
        ids = torch.tensor([[b % loaded.vocab for b in prompt.encode("utf-8")]], dtype=torch.long)
    if ids.shape[1] < 1:
        raise typer.BadParameter("the prompt is empty: give at least one token of text", param_hint="--prompt")
    return ids


def _decode(loaded: Any, ids: list[int]) -> str:
    if loaded.tokenizer is not None:
        return loaded.tokenizer.decode(ids, skip_special_tokens=True)
    return bytes(i % 256 for i in ids).decode("utf-8", errors="replace")


def _generate_with_bar(fast, ids, max_new_tokens, temperature, top_k, top_p, seed, quiet):
    """tcomp.generate with a rich progress bar of tokens; returns the ids and each step's seconds
    (the first is the prefill), timed after a device synchronisation."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import tcomp

    times: list[float] = []
    last = [time.perf_counter()]
    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    err = Console(stderr=True)

    def tick(bar=None, task=None):
        def on_token(_i: int) -> None:
            sync()
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now
            if bar is not None:
                bar.update(task, advance=1)

        return on_token

    kw = dict(max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=temperature or 1.0,
              top_k=top_k or None, top_p=top_p, seed=seed)  # fmt: skip
    sync()
    last[0] = time.perf_counter()
    if quiet or not err.is_terminal:
        out = tcomp.generate(fast, ids, on_token=tick(), **kw)
    else:
        with Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=True) as bar:  # fmt: skip
            task = bar.add_task("tokens", total=max_new_tokens)
            out = tcomp.generate(fast, ids, on_token=tick(bar, task), **kw)
    return out, times


if __name__ == "__main__":  # pragma: no cover - last, so that every command above is registered
    app()
