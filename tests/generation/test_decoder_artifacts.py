"""Decoder artifacts: ``save`` writes one folder with both graphs, one weights file (each shared
tensor once, no KV cache) and a manifest with hashes; ``tcomp.load`` gives back a decoder that
generates the same tokens, in a process that cannot import transformers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import tcomp
from tcomp.errors import InputError

from .decoders import make
from .test_hf_generate import _prompt

pytestmark = pytest.mark.hf
NEW = 16
MAX_LEN = 48
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=["llama", "gpt2"])  # gpt2 ties its embedding and lm_head
def saved(request, tmp_path_factory):
    model = make(request.param)
    fast = tcomp.optimize(model, {"input_ids": _prompt(1)[0]}, max_len=MAX_LEN, verify=False)
    folder = tmp_path_factory.mktemp(request.param) / "art"
    fast.save(folder)
    return model, fast, folder


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(module.named_parameters(remove_duplicate=False)) | dict(module.named_buffers(remove_duplicate=False))


def test_reloaded_decoder_generates_the_same_tokens(saved):
    model, fast, folder = saved
    loaded = tcomp.load(folder)
    assert isinstance(loaded, tcomp.OptimizedDecoder)
    ids, mask = _prompt(5)
    for m in (mask, None):  # with and without left padding
        want = tcomp.generate(fast, ids, attention_mask=m, max_new_tokens=NEW)
        got = tcomp.generate(loaded, ids, attention_mask=m, max_new_tokens=NEW)
        assert torch.equal(got, want)
        kw = {} if m is None else {"attention_mask": m}
        ref = model.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, **kw)
        assert torch.equal(got, ref)  # and both are HF eager's tokens
    sample = dict(max_new_tokens=NEW, do_sample=True, temperature=0.9, top_k=20, seed=7)
    assert torch.equal(tcomp.generate(loaded, ids, **sample), tcomp.generate(fast, ids, **sample))
    with torch.no_grad():  # the logits of every prompt position, bit for bit
        assert torch.equal(loaded(ids, attention_mask=mask), fast.tcomp_decoder(ids, attention_mask=mask))
    # one cache shared by the two loaded graphs, and one tensor per stored weight
    pre, dec = _tensors(loaded.prefill_module), _tensors(loaded.decode_module)
    for i in range(loaded.n_layers):
        for name in (f"tcomp_kv_k_{i}", f"tcomp_kv_v_{i}"):
            assert pre[name] is dec[name]
    assert all(pre[n] is dec[n] for n in pre.keys() & dec.keys())
    assert loaded.code == fast.tcomp_decoder.code
    assert loaded.report["passes"] == json.loads(fast.report.to_json())["passes"]


def test_manifest_describes_both_graphs_and_the_cache(saved):
    _, fast, folder = saved
    runner, manifest = fast.tcomp_decoder, _manifest(folder)
    assert manifest["format"] == "tcomp-decoder/1"
    assert (manifest["batch"], manifest["max_len"], manifest["n_layers"]) == (2, MAX_LEN, runner.n_layers)
    cache = {n: t for n, t in _tensors(runner.prefill_module).items() if n.startswith("tcomp_kv_")}
    assert len(cache) == 2 * runner.n_layers
    assert manifest["cache"] == {n: {"shape": list(t.shape), "dtype": "float32"} for n, t in cache.items()}
    for graph, report in (("prefill", fast.report), ("decode", fast.decode_report)):
        entry = manifest["graphs"][graph]
        assert [(p["name"], p["status"]) for p in entry["passes"]] == [(p.name, p.status) for p in report.passes]
        assert {"runner.py", "graph_after.txt", "report.json", "report.html"} <= {
            f.removeprefix(f"{graph}/") for f in manifest["files"] if f.startswith(f"{graph}/")
        }
        assert "import transformers" not in (folder / graph / "runner.py").read_text()
    assert {"weights.safetensors", "plan.json"} <= set(manifest["files"])
    assert tcomp.Plan.from_json((folder / "plan.json").read_text()) == fast.plan == tcomp.load(folder).plan


def test_weights_file_holds_each_shared_tensor_once_and_no_cache(saved):
    _, fast, folder = saved
    runner, manifest = fast.tcomp_decoder, _manifest(folder)
    with safe_open(str(folder / "weights.safetensors"), "pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    assert not any(k.startswith("tcomp_kv_") for k in stored)
    distinct = {}  # the tensors the two graphs hold, by memory: shared ones count once
    for module in (runner.prefill_module, runner.decode_module):
        for name, t in _tensors(module).items():
            if not name.startswith("tcomp_kv_"):
                distinct[(t.data_ptr(), t.dtype, tuple(t.shape))] = t
    assert len(stored) == len(distinct)
    assert sum(t.nbytes for t in stored.values()) == sum(t.nbytes for t in distinct.values())
    pre, dec = manifest["graphs"]["prefill"]["tensors"], manifest["graphs"]["decode"]["tensors"]
    assert pre.keys() & dec.keys() and all(pre[n] == dec[n] for n in pre.keys() & dec.keys())
    for graph, keys in (("prefill", pre), ("decode", dec)):  # every entry holds that graph's tensor
        module = runner.prefill_module if graph == "prefill" else runner.decode_module
        held = _tensors(module)
        assert all(torch.equal(stored[key], held[name]) for name, key in keys.items())
    if "model.transformer.wte.weight" in dec:  # GPT-2's tied embedding and lm_head: one entry
        assert dec["model.transformer.wte.weight"] == dec["model.lm_head.weight"]


def test_load_refuses_tampered_files(saved, tmp_path):
    _, _, folder = saved
    for name in ("weights.safetensors", "decode/runner.py", "prefill/graph_after.txt"):
        copy = tmp_path / name.replace("/", "_")
        shutil.copytree(folder, copy)
        data = bytearray((copy / name).read_bytes())
        data[-2] ^= 0x01
        (copy / name).write_bytes(bytes(data))
        with pytest.raises(InputError, match=name):
            tcomp.load(copy)
    copy = tmp_path / "format"
    shutil.copytree(folder, copy)
    manifest = _manifest(copy)
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format": "tcomp-decoder/9"}))
    with pytest.raises(InputError, match="unknown artifact format"):
        tcomp.load(copy)


def test_saving_a_loaded_decoder_says_to_copy_the_folder(saved, tmp_path):
    loaded = tcomp.load(saved[2])
    with pytest.raises(InputError, match="copy that folder"):
        loaded.save(tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_loads_and_generates_in_a_process_without_transformers(saved, tmp_path):
    _, fast, folder = saved
    ids, mask = _prompt(9)
    save_file({"ids": ids, "mask": mask}, str(tmp_path / "in.safetensors"))
    script = textwrap.dedent(f"""
        import sys
        sys.modules["transformers"] = None  # any import of it fails
        import tcomp
        from safetensors.torch import load_file, save_file
        x = load_file({str(tmp_path / "in.safetensors")!r})
        out = tcomp.generate(tcomp.load({str(folder)!r}), x["ids"], attention_mask=x["mask"], max_new_tokens={NEW})
        save_file({{"out": out}}, {str(tmp_path / "out.safetensors")!r})
        assert sys.modules["transformers"] is None
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = tcomp.generate(fast, ids, attention_mask=mask, max_new_tokens=NEW)
    assert torch.equal(load_file(str(tmp_path / "out.safetensors"))["out"], want)


def test_cli_optimize_writes_a_decoder_folder(tmp_path):
    from typer.testing import CliRunner

    from tcomp.cli import app

    from .decoders import llama_spec

    out = tmp_path / "art"
    res = CliRunner().invoke(app, ["optimize", "tests.generation.decoders:llama_spec", "--no-verify", "--json",
                                   "-o", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    reports = json.loads(res.stdout)
    assert set(reports) == {"prefill", "decode"} and reports["decode"]["model"].endswith("(decode)")
    manifest = _manifest(out)
    assert manifest["format"] == "tcomp-decoder/1" and manifest["model"] == "tests.generation.decoders:llama_spec"
    model, _ = llama_spec()
    ids, mask = _prompt(4)
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    assert torch.equal(tcomp.generate(tcomp.load(out), ids, attention_mask=mask, max_new_tokens=NEW), ref)


def test_cli_run_on_a_decoder_folder_gives_the_prompts_logits(saved, tmp_path):
    from typer.testing import CliRunner

    from tcomp.cli import app

    _, fast, folder = saved
    ids, mask = _prompt(10)
    save_file({"input_ids": ids, "attention_mask": mask}, str(tmp_path / "in.safetensors"))
    res = CliRunner().invoke(app, ["run", str(folder), "--input", str(tmp_path / "in.safetensors"),
                                   "-o", str(tmp_path / "out.safetensors")])  # fmt: skip
    assert res.exit_code == 0, (res.output, res.exception)
    with torch.no_grad():
        want = fast.tcomp_decoder(ids, attention_mask=mask)
    assert torch.equal(load_file(str(tmp_path / "out.safetensors"))["output"], want)
    with pytest.raises(InputError, match=r"not \['past_key_values'\].*step\(\) continues"):
        tcomp.load(folder)(ids, past_key_values=object())


def test_the_models_eos_stops_the_optimized_and_the_reloaded_decoder(tmp_path):
    model = make("llama", seed=7)
    ids, mask = _prompt(11)
    eos = int(model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)[0, -2])
    model.generation_config.eos_token_id = eos  # the user's model, before optimize
    fast = tcomp.optimize(model, {"input_ids": ids}, max_len=MAX_LEN, verify=False)
    fast.save(tmp_path / "art")
    loaded = tcomp.load(tmp_path / "art")
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)  # stops at eos
    for decoder in (fast, fast.tcomp_decoder, loaded):
        out = tcomp.generate(decoder, ids, attention_mask=mask, max_new_tokens=NEW)
        assert torch.equal(out, ref), type(decoder).__name__
    assert _manifest(tmp_path / "art")["generation"] == {"eos_token_id": eos, "pad_token_id": 0}
