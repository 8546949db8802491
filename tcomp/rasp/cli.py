"""``tcomp rasp ...``: a typer sub-app (the main CLI adds it with ``app.add_typer(rasp_app, name="rasp")``).

    tcomp rasp extract SPEC -o program.json   RASP program of a Transformer-Program-style model
                                              (stored as JSON; -o program.py: printed Python)
    tcomp rasp compile program.json -o DIR    weights (safetensors) of the transformer computing it
    tcomp rasp run program.json "3 1 2"       run a program file on one input
    tcomp rasp show program.json              print a program as standalone Python

A program file is JSON (``tcomp.rasp.save_json``) or Python (a printed program, or one defining
VOCAB, MAX_LEN and ``program``).

Exit codes: 0 success, 2 bad input (a model outside the family, an invalid program).
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import typer
from rich.console import Console

rasp_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="RASP: extract, compile and run programs."
)
console = Console()


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(2)


def _load_stored(path: Path):
    """A program file as a ``StoredProgram``: JSON as stored, Python by running it (no doc)."""
    from tcomp.rasp.printer import load_namespace
    from tcomp.rasp.store import StoredProgram, load_json

    try:
        if path.suffix == ".json":
            return load_json(path)
        return StoredProgram(*load_namespace(runpy.run_path(str(path), run_name="tcomp_rasp_program")))
    except (OSError, ValueError, SyntaxError) as exc:
        _fail(exc)


def _load_program(path: Path):
    stored = _load_stored(path)
    return stored.program, stored.vocab, stored.max_len


def _tokens(text: str, vocab: list) -> list:
    out = []
    for t in text.replace(",", " ").split():
        v = int(t) if t.lstrip("-").isdigit() else t
        if v not in vocab:
            _fail(ValueError(f"token {t!r} is not in the program's VOCAB {vocab}"))
        out.append(v)
    return out


@rasp_app.command()
def extract(
    spec: str = typer.Argument(
        ..., help="package.module:factory returning (model, example_inputs), or a zoo name"
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="where to write the program: FILE.json (data) or FILE.py (Python source)"
    ),
) -> None:
    """Extract the RASP program a Transformer-Program-style model computes (pass rasp.extract)."""
    import warnings

    from tcomp.capture import capture
    from tcomp.errors import TcompError
    from tcomp.rasp.extract import extract as run_extract
    from tcomp.rasp.printer import to_source
    from tcomp.rasp.store import save_json
    from tcomp.spec import load_spec

    warnings.filterwarnings("ignore")
    try:
        loaded = load_spec(spec)
        ex = run_extract(capture(loaded.model, loaded.args, loaded.kwargs).gm)
    except TcompError as exc:
        _fail(exc)
    doc = f"RASP program extracted from {spec}"
    if output.suffix == ".json":
        save_json(output, ex.program, ex.vocab, ex.max_len, doc=doc)
    else:
        output.write_text(to_source(ex.program, ex.vocab, ex.max_len, doc=doc))
    console.print(
        f"wrote {output}: {ex.heads} heads, {ex.mlps} MLP tables, {ex.n_used} of {ex.n_variables} variables used"
    )


@rasp_app.command(name="compile")
def compile_cmd(
    program: Path = typer.Argument(
        ..., help="program file: JSON, or Python with VOCAB, MAX_LEN and build(r) or program"
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="folder for model.safetensors, rasp.json, program.py (or program.json)"
    ),
    check: int = typer.Option(200, help="random inputs on which the model is checked against the evaluator"),
    seed: int = typer.Option(0),
) -> None:
    """Compile a RASP program to transformer weights, checked against the evaluator."""
    import random

    from safetensors.torch import save_file

    from tcomp.rasp.compile import compile_program
    from tcomp.rasp.evaluate import evaluate
    from tcomp.rasp.validate import ValidationError

    prog, vocab, max_len = _load_program(program)
    try:
        model = compile_program(prog, vocab, max_len)
    except ValidationError as exc:
        _fail(exc)
    rng = random.Random(seed)
    for _ in range(check):
        xs = [rng.choice(vocab) for _ in range(rng.randint(1, max_len))]
        got, want = model.run(xs), evaluate(prog, xs)
        close = (
            all(abs(a - b) <= 1e-5 * max(1.0, abs(b)) for a, b in zip(got, want))
            if prog.numerical
            else got == want
        )
        if not close:
            _fail(RuntimeError(f"compiled model disagrees with the evaluator on {xs}: {got} != {want}"))
    output.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(output / "model.safetensors"))
    meta = {
        "vocab": vocab,
        "max_len": max_len,
        "output_values": model.output_values,
        "layers": len(model.layers),
    }
    (output / "rasp.json").write_text(json.dumps(meta, indent=2, default=str))
    (output / f"program{'.json' if program.suffix == '.json' else '.py'}").write_text(program.read_text())
    console.print(
        f"wrote {output}: {len(model.layers)} layers, residual width {model.layout.size}, "
        f"checked on {check} random inputs"
    )


@rasp_app.command()
def run(
    program: Path = typer.Argument(..., help="program file"),
    tokens: str = typer.Argument(..., help='the input, e.g. "3 1 2"'),
    compiled: bool = typer.Option(False, "--compiled", help="also run the compiled transformer"),
) -> None:
    """Run a program file on one input (with --compiled, also through its compiled weights)."""
    from tcomp.rasp.evaluate import evaluate

    prog, vocab, max_len = _load_program(program)
    xs = _tokens(tokens, vocab)
    if len(xs) > max_len:
        _fail(ValueError(f"the input has {len(xs)} tokens; the program's MAX_LEN is {max_len}"))
    typer.echo(" ".join(str(v) for v in evaluate(prog, xs)))
    if compiled:
        from tcomp.rasp.compile import compile_program

        typer.echo(" ".join(str(v) for v in compile_program(prog, vocab, max_len).run(xs)))


@rasp_app.command()
def show(program: Path = typer.Argument(..., help="program file (JSON, or Python)")) -> None:
    """Print a program as Python source that runs on its own (tcomp.rasp.to_source)."""
    from tcomp.rasp.printer import to_source

    stored = _load_stored(program)
    typer.echo(to_source(stored.program, stored.vocab, stored.max_len, doc=stored.doc), nl=False)
