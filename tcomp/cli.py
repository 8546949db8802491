"""The ``tcomp`` command (typer + rich).

    tcomp passes                                  registered passes with their contracts
    tcomp inspect SPEC                            attention sites, spelling, shapes, cost by sequence length
    tcomp optimize SPEC --target T [--passes P] -o DIR   optimize and write the artifact folder
    tcomp verify DIR [--model SPEC]               re-check hashes (and outputs against the source model)
    tcomp run DIR --input FILE [-o OUT]           run an artifact on inputs stored as safetensors

Exit codes: 0 success, 1 a pass was rolled back (output still written), 2 bad input or capture failure.
"""

from __future__ import annotations

import json
import logging
import warnings

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="tcomp: a verified compiler for PyTorch transformers."
)
console = Console()


def _quiet() -> None:
    logging.getLogger("torch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(2)


@app.command()
def passes(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List the registered passes and their contracts."""
    import tcomp

    rows = [
        {
            "name": p.name,
            "contract": p.contract.describe(),
            "default": p.default,
            "description": p.description,
        }
        for p in tcomp.registered_passes().values()
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    t = Table(title="passes")
    for col in ("name", "contract", "default", "description"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["contract"], "yes" if r["default"] else "", r["description"])
    console.print(t)


@app.command()
def inspect(
    spec: str = typer.Argument(..., help="zoo name (e.g. bert, minilm, default) or package.module:factory"),
    target: str = typer.Option("cpu", help="target for the roofline: cpu, a100, h100, h200"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show the attention sites of a model (spelling, shapes) and their cost by sequence length."""
    import tcomp
    from tcomp.errors import TcompError
    from tcomp.spec import load_spec

    _quiet()
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
    except TcompError as exc:
        _fail(exc)
    rep = om.report
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "model": loaded.name,
                    "sites": rep.sites,
                    "cost": rep.cost,
                    "cost_symbolic": rep.cost_symbolic,
                },
                indent=2,
                default=str,
            )
        )
        return
    rep.model = loaded.name
    console.print(rep.render())
    for kind, expr in rep.cost_symbolic.items():
        console.print(f"[bold]{kind}[/bold]: {expr}")


@app.command()
def optimize(
    spec: str = typer.Argument(..., help="zoo name (e.g. bert, minilm, default) or package.module:factory"),
    target: str = typer.Option("cpu", help="cpu, a100, h100, h200"),
    passes: str = typer.Option("", help="comma-separated pass names (default: the target's exact pipeline)"),
    output: str = typer.Option(..., "-o", "--output", help="artifact folder to write"),
    no_verify: bool = typer.Option(False, "--no-verify", help="skip checking each pass against its contract"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Optimize a model for a target and write the artifact folder with the report."""
    import tcomp
    from tcomp.errors import TcompError
    from tcomp.spec import load_spec

    _quiet()
    names = [p.strip() for p in passes.split(",") if p.strip()] or None
    try:
        loaded = load_spec(spec)
        with console.status(f"optimizing {loaded.name} for {target}"):
            om = tcomp.optimize(
                loaded.model,
                loaded.args,
                target=target,
                passes=names,
                verify=not no_verify,
                example_kwargs=loaded.kwargs,
            )
        om.report.model = loaded.name
        manifest = om.save(output)
    except TcompError as exc:
        _fail(exc)
    if as_json:
        typer.echo(om.report.to_json())
    else:
        console.print(om.report.render())
        console.print(f"wrote {output} (manifest: {manifest})")
    if any(r.status == "rolled_back" for r in om.report.passes):
        raise typer.Exit(1)


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


if __name__ == "__main__":  # pragma: no cover
    app()
