"""SPEC kinds beyond the zoo: a torch.export .pt2 file and a Hugging Face model folder (made here
from a tiny random BertConfig with save_pretrained; nothing is downloaded), and their errors."""

from __future__ import annotations

import pytest
import torch

import tcomp
from tcomp import models as zoo
from tcomp.errors import InputError
from tcomp.spec import load_spec
from tcomp.verify import rel_error

transformers = pytest.importorskip("transformers")


def _save_pt2(tmp_path, dynamic: bool):
    e = zoo.get("bert")
    ep = torch.export.export(
        e.model, e.example_inputs, e.example_kwargs, dynamic_shapes=e.dynamic_shapes() if dynamic else None
    )
    path = tmp_path / "bert.pt2"
    torch.export.save(ep, str(path))
    return e, path


def test_pt2_spec_runs_the_program_and_optimizes(tmp_path):
    e, path = _save_pt2(tmp_path, dynamic=True)
    loaded = load_spec(str(path))
    assert loaded.name == "bert.pt2"
    for got, want in zip(loaded.args, e.example_inputs):
        assert torch.equal(got, want)
    assert set(loaded.kwargs) == set(e.example_kwargs)
    om = tcomp.optimize(loaded.model, loaded.args, example_kwargs=loaded.kwargs)
    canon = om.report["canonicalize"]
    assert canon.status == "applied" and canon.error <= canon.tolerance
    assert len(om.report.sites) == e.n_attention_layers
    assert all(v == "dynamic" for dims in om.report.dynamic_dims.values() for v in dims.values())
    args, kwargs = e.make_inputs(3, 11, 7)  # another batch size and length: the program was dynamic
    with torch.no_grad():
        ref = e.model.double()(*args, **kwargs)
        assert rel_error(om(*args, **kwargs), ref) < 1e-5


def _tiny_bert(folder, tokenizer: bool):
    cfg = transformers.BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48
    )
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    model.save_pretrained(str(folder))
    if tokenizer:
        words = [
            "[PAD]",
            "[UNK]",
            "[CLS]",
            "[SEP]",
            "[MASK]",
        ] + "the quick brown fox jumps over lazy dog a short one .".split()
        vocab = folder / "vocab.txt"
        vocab.write_text("\n".join(words) + "\n")
        transformers.BertTokenizer(str(vocab)).save_pretrained(str(folder))
    return model


@pytest.mark.parametrize("tokenizer", [False, True], ids=["random-ids", "tokenizer"])
def test_hf_folder_spec(tmp_path, tokenizer):
    folder = tmp_path / "tiny-bert"
    model = _tiny_bert(folder, tokenizer)
    loaded = load_spec(str(folder))
    assert loaded.name == "tiny-bert" and loaded.args == ()
    ids, mask = loaded.kwargs["input_ids"], loaded.kwargs["attention_mask"]
    assert ids.shape == mask.shape and ids.dim() == 2 and 0 <= int(ids.min()) and int(ids.max()) < 60
    assert (mask == 0).any() and (mask == 1).any()  # a padded row
    if tokenizer:  # [CLS] ... [SEP] from the folder's own vocabulary, not random ids
        assert (ids[:, 0] == 2).all() and int(ids.max()) < 17
    with torch.no_grad():
        want = model(**loaded.kwargs).last_hidden_state
        assert torch.equal(loaded.model(**loaded.kwargs).last_hidden_state, want)
    om = tcomp.optimize(loaded.model, loaded.args, example_kwargs=loaded.kwargs)
    assert om.report["canonicalize"].status == "applied" and len(om.report.sites) == 2


def test_spec_errors(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        load_spec(str(tmp_path / "missing.pt2"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="without config.json"):
        load_spec(str(tmp_path / "empty"))
    (tmp_path / "nocfg").mkdir()
    (tmp_path / "nocfg" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(InputError, match="no \\*.safetensors"):
        load_spec(str(tmp_path / "nocfg"))
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(torch.randint(0, 255, (256,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(InputError, match="cannot load it as a torch.export program"):
        load_spec(str(bad))
    other = tmp_path / "model.onnx"
    other.write_text("x")
    with pytest.raises(InputError, match="not a .pt2 file"):
        load_spec(str(other))
