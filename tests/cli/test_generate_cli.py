"""tcomp generate: a Hugging Face causal LM folder compiled and generating from a text prompt."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tcomp.cli import app
from tests.generation.decoders import make

runner = CliRunner()
pytestmark = pytest.mark.hf


def test_generate_from_a_folder_equals_hf_greedy(tmp_path):
    model = make("llama", seed=3)
    model.save_pretrained(tmp_path / "tiny")
    prompt = "Hello, world"
    res = runner.invoke(app, ["generate", str(tmp_path / "tiny"), "--prompt", prompt, "-n", "6", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    ids = torch.tensor([[b % model.config.vocab_size for b in prompt.encode()]])  # no tokenizer: bytes
    ref = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)[0, ids.shape[1] :]
    assert d["token_ids"] == ref.tolist()
    assert d["new_tokens"] == 6 and d["prompt_tokens"] == ids.shape[1]
    assert d["tokens_per_second"] > 0 and d["decode_ms_per_token"] > 0 and d["compile_seconds"] > 0


def test_generate_refuses_what_cannot_generate(tmp_path):
    res = runner.invoke(app, ["generate", "bert", "--prompt", "hi there"])
    assert res.exit_code == 2 and "not a decoder" in res.output
    res = runner.invoke(app, ["generate", str(tmp_path), "--prompt", "hi there"])
    assert res.exit_code == 2 and "config.json" in res.output


def _greedy(model, ids, new):
    return model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)[0, ids.shape[1] :].tolist()


def test_one_token_prompts_generate_and_empty_ones_are_refused(tmp_path):
    model = make("llama", seed=4)
    model.save_pretrained(tmp_path / "tiny")
    res = runner.invoke(app, ["generate", str(tmp_path / "tiny"), "--prompt", "A", "-n", "4", "--json", "--no-verify"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["token_ids"] == _greedy(model, torch.tensor([[ord("A") % 96]]), 4)
    res = runner.invoke(app, ["generate", str(tmp_path / "tiny"), "--prompt", "", "--no-verify"])
    assert res.exit_code == 2 and "empty" in res.output
    res = runner.invoke(app, ["generate", str(tmp_path / "tiny"), "--prompt", "hi", "--top-p", "1.5"])
    assert res.exit_code == 2 and "top-p" in res.output


def test_generation_stops_at_the_models_eos(tmp_path):
    model = make("llama", seed=5)
    prompt = "Hello, world"
    ids = torch.tensor([[b % 96 for b in prompt.encode()]])
    eos = _greedy(model, ids, 6)[2]
    model.generation_config.eos_token_id = eos
    model.save_pretrained(tmp_path / "tiny")
    res = runner.invoke(app, ["generate", str(tmp_path / "tiny"), "--prompt", prompt, "-n", "6", "--json", "--no-verify"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["token_ids"] == model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1] :].tolist()
    assert d["token_ids"][-1] == eos and d["new_tokens"] == len(d["token_ids"]) <= 3


def test_a_rolled_back_pass_exits_1_and_the_json_says_which(tmp_path):
    from tests.generation import test_decoder_references  # noqa: F401 - registers test.decode_reads_16_slots

    model = make("llama", seed=6)
    model.save_pretrained(tmp_path / "tiny")
    prompt = "Hello, world"  # 12 tokens; 20 new fill slots past the 16 the broken pass reads
    res = runner.invoke(app, ["generate", str(tmp_path / "tiny"), "--prompt", prompt, "-n", "20", "--json",
                              "--passes", "test.decode_reads_16_slots", "--on-failure", "warn"])  # fmt: skip
    assert res.exit_code == 1, res.output
    d = json.loads(res.stdout)
    status = {g: {p["name"]: p["status"] for p in ps} for g, ps in d["passes"].items()}
    assert status["decode"]["test.decode_reads_16_slots"] == "rolled_back"
    assert d["token_ids"] == _greedy(model, torch.tensor([[b % 96 for b in prompt.encode()]]), 20)


def test_python_dash_m_knows_the_generate_command():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "tcomp.cli", "generate", "--help"], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0 and "--max-new-tokens" in proc.stdout, proc.stdout + proc.stderr


def test_a_max_len_too_small_is_refused_before_compiling(tmp_path):
    make("llama", seed=4).save_pretrained(tmp_path / "tiny")
    res = runner.invoke(app, ["generate", str(tmp_path / "tiny"), "--prompt", "Hello", "-n", "8", "--max-len", "11"])
    assert res.exit_code == 2 and "need 12 KV-cache slots" in res.output and "--max-len 12" in res.output, res.output
    res = runner.invoke(app, ["generate", str(tmp_path / "tiny"), "--prompt", "Hello", "-n", "8", "--max-len", "12",
                              "--json", "--no-verify"])  # fmt: skip
    assert res.exit_code == 0 and json.loads(res.stdout)["new_tokens"] == 8, res.output


def test_generate_with_an_int8_kv_cache(tmp_path):
    """--kv-cache int8 compiles the int8 cache (the JSON says so) and generates; an unknown format
    is refused with the two known ones named."""
    model = make("gpt2", seed=5)
    model.save_pretrained(tmp_path / "tiny")
    res = runner.invoke(app, ["generate", str(tmp_path / "tiny"), "--prompt", "Hello", "-n", "4", "--json",
                              "--kv-cache", "int8"])  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["kv_cache"] == "int8" and d["new_tokens"] == 4
    res = runner.invoke(app, ["generate", str(tmp_path / "tiny"), "--prompt", "Hello", "-n", "4", "--kv-cache", "fp4"])
    assert res.exit_code != 0 and "'model', 'int8'" in res.output
