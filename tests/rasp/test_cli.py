"""The ``tcomp rasp`` sub-app through typer's CliRunner."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tcomp import rasp
from tcomp.rasp import programs as P
from tcomp.rasp.cli import rasp_app
from tcomp.rasp.compile import compile_program

VOCAB, MAX_LEN = [0, 1, 2, 3], 5
runner = CliRunner()


def compiled_sort():
    """A factory for ``extract``: (model, example inputs)."""
    return compile_program(P.sort(MAX_LEN), VOCAB, MAX_LEN), (torch.tensor([[3, 1, 2], [0, 2, 1]]),)


def test_extract_then_run_then_compile(tmp_path):
    prog = tmp_path / "sort.py"
    res = runner.invoke(rasp_app, ["extract", "tests.rasp.test_cli:compiled_sort", "-o", str(prog)])
    assert res.exit_code == 0, res.output
    assert "5 of 5 variables" in res.output
    res = runner.invoke(rasp_app, ["run", str(prog), "3 1 2 1", "--compiled"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == ["1 1 2 3", "1 1 2 3"]
    out = tmp_path / "compiled"
    res = runner.invoke(rasp_app, ["compile", str(prog), "-o", str(out), "--check", "30"])
    assert res.exit_code == 0, res.output
    weights = load_file(str(out / "model.safetensors"))
    assert "embed_tokens" in weights and (out / "program.py").exists()


def test_run_hand_written_program(tmp_path):
    src = tmp_path / "rev.py"
    src.write_text(
        "from tcomp.rasp import programs\nVOCAB = ['a', 'b', 'c']\nMAX_LEN = 4\nprogram = programs.reverse()\n"
    )
    res = runner.invoke(rasp_app, ["run", str(src), "a b c"])
    assert res.exit_code == 0 and res.output.strip() == "c b a"
    assert rasp.evaluate(P.reverse(), list("abc")) == list("cba")


def test_errors_exit_2_with_a_reason(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from tcomp.rasp import Aggregate, Select, Comparison, tokens\nVOCAB = [0, 1]\nMAX_LEN = 3\n"
        "program = Aggregate(Select(tokens, tokens, Comparison.LEQ), tokens, name='pick')\n"
    )
    res = runner.invoke(rasp_app, ["compile", str(bad), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "pick" in res.output and "at most one" in res.output
    res = runner.invoke(rasp_app, ["run", str(bad), "0 7"])
    assert res.exit_code == 2 and "not in the program's VOCAB" in res.output
    res = runner.invoke(rasp_app, ["extract", "bert", "-o", str(tmp_path / "b.py")])
    assert res.exit_code == 2 and "not a Transformer Program" in res.output
