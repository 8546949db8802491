"""The ``tcomp rasp`` sub-app through typer's CliRunner."""

from __future__ import annotations

import pytest
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


@pytest.mark.parametrize("suffix", [".py", ".json"])
def test_extract_then_run_then_compile(tmp_path, suffix):
    prog = tmp_path / f"sort{suffix}"
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
    assert "embed_tokens" in weights and (out / f"program{suffix}").read_text() == prog.read_text()


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


def test_show_prints_a_stored_program_that_runs_on_its_own(tmp_path):
    prog = tmp_path / "sort.json"
    res = runner.invoke(rasp_app, ["extract", "tests.rasp.test_cli:compiled_sort", "-o", str(prog)])
    assert res.exit_code == 0, res.output
    stored = rasp.load_json(prog)
    assert stored.doc == "RASP program extracted from tests.rasp.test_cli:compiled_sort"
    res = runner.invoke(rasp_app, ["show", str(prog)])
    assert res.exit_code == 0, res.output
    assert res.output == rasp.to_source(stored.program, stored.vocab, stored.max_len, doc=stored.doc)
    ns: dict = {"__name__": "shown"}
    exec(compile(res.output, "shown.py", "exec"), ns)  # noqa: S102 - the program just printed
    for xs in ([3, 1, 2, 1], [0], [2, 2, 0, 3, 1]):
        assert ns["program"](xs) == rasp.evaluate(P.sort(MAX_LEN), xs)


def test_show_refuses_a_file_that_is_not_a_program(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something", "exprs": []}')
    res = runner.invoke(rasp_app, ["show", str(bad)])
    assert res.exit_code == 2 and "not a stored RASP program" in res.output
