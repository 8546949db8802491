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
