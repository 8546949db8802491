"""Model specs for the command line:

* a zoo name (``bert``, ``minilm``, ``default``);
* ``package.module:factory`` where ``factory()`` returns a zoo entry, ``(model, example_inputs)``
  or ``(model, example_args, example_kwargs)``;
* a ``.pt2`` file written by ``torch.export.save``: the program's own module
  (``ExportedProgram.module()``, same call signature and output structure as the exported model)
  with the example inputs saved in the program; tcomp captures that module again, which keeps
  every command's behaviour the same as for an ``nn.Module`` (the float64 reference runs the
  program's module in float64);
* a Hugging Face model folder (``config.json`` + ``*.safetensors``, as ``save_pretrained``
  writes it), loaded offline with ``AutoModel.from_pretrained``. Text models get example inputs
  from the folder's tokenizer when it has one, else random token ids below ``vocab_size``; image
  models get random ``pixel_values``.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tcomp.errors import InputError


@dataclass
class Loaded:
    name: str
    model: torch.nn.Module
    args: tuple
    kwargs: dict = field(default_factory=dict)


def load_spec(spec: str, seed: int = 0) -> Loaded:
    from tcomp import models as zoo

    if spec.endswith(".pt2") or "/" in spec or Path(spec).exists():
        return _from_path(Path(spec), seed)
    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as exc:
            raise InputError(
                f"cannot load {spec!r}: {exc}. Use package.module:factory with the package importable."
            ) from exc
        return _from_object(spec, factory())
    name = zoo.default() if spec == "default" else spec
    if name not in zoo.ZOO:
        raise InputError(
            f"unknown model {spec!r}; zoo models: {', '.join(zoo.names())}, or package.module:factory"
        )
    entry = zoo.get(name, seed=seed)
    return Loaded(name, entry.model, tuple(entry.example_inputs), dict(entry.example_kwargs))


def _from_object(name: str, obj: Any) -> Loaded:
    if hasattr(obj, "model") and hasattr(obj, "example_inputs"):
        return Loaded(
            name, obj.model, tuple(obj.example_inputs), dict(getattr(obj, "example_kwargs", {}) or {})
        )
    if isinstance(obj, tuple) and obj and isinstance(obj[0], torch.nn.Module):
        model, rest = obj[0], obj[1:]
        args = rest[0] if rest else ()
        kwargs = rest[1] if len(rest) > 1 else {}
        if isinstance(args, dict):
            args, kwargs = (), args
        if not isinstance(args, tuple):
            args = (args,)
        return Loaded(name, model, args, kwargs)
    raise InputError(f"{name} returned {type(obj).__name__}; return (model, example_inputs) or a zoo entry")


# -- files and folders -------------------------------------------------------------------------------

TEXT_BATCH, TEXT_SEQ = 2, 16  # size of random example token ids when a folder has no tokenizer
_SENTENCES = ["The quick brown fox jumps over the lazy dog.", "A short one."]


def _from_path(path: Path, seed: int) -> Loaded:
    if not path.exists():
        raise InputError(
            f"{path}: no such file or folder (expected a .pt2 file or a Hugging Face model folder)"
        )
    if path.is_dir():
        return _from_hf_folder(path, seed)
    if path.suffix != ".pt2":
        raise InputError(f"{path}: not a .pt2 file; save a program with torch.export.save(ep, 'model.pt2')")
    return _from_pt2(path)


def _from_pt2(path: Path) -> Loaded:
    import torch.export

    try:
        ep = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a loadable program
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{path}: cannot load it as a torch.export program ({first}); write it with torch.export.save"
        ) from exc
    example = getattr(ep, "example_inputs", None)
    if not example:
        raise InputError(
            f"{path}: the program carries no example inputs; export it with example inputs and save it "
            "with torch.export.save (torch >= 2.4 stores them)"
        )
    args, kwargs = example
    return Loaded(path.name, ep.module(), tuple(args), dict(kwargs))


def _from_hf_folder(path: Path, seed: int) -> Loaded:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InputError(
            f"{path}: a folder without config.json; a Hugging Face model folder needs config.json and "
            "*.safetensors (model.save_pretrained(folder) writes both)"
        )
    if not list(path.glob("*.safetensors")):
        raise InputError(
            f"{path}: no *.safetensors weights next to config.json (tcomp never loads pickled .bin "
            "weights); save with model.save_pretrained(folder)"
        )
    try:
        from transformers import AutoModel
    except ImportError as exc:
        raise InputError(
            "loading a Hugging Face folder needs transformers: pip install transformers"
        ) from exc
    try:
        model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True).eval()
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: transformers could not load the model ({first})") from exc
    config = json.loads(config_file.read_text())
    return Loaded(path.name, model, (), _hf_inputs(path, config, seed))


def _hf_inputs(path: Path, config: dict, seed: int) -> dict:
    """Example inputs for a Hugging Face model: tokenized sentences (tokenizer in the folder) or
    random token ids below ``vocab_size`` for text; random ``pixel_values`` for images."""
    gen = torch.Generator().manual_seed(seed)
    if "vocab_size" in config:
        tokenizer = _tokenizer(path)
        if tokenizer is not None:
            enc = tokenizer(_SENTENCES, padding=True, truncation=True, max_length=64, return_tensors="pt")
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        ids = torch.randint(0, int(config["vocab_size"]), (TEXT_BATCH, TEXT_SEQ), generator=gen)
        mask = torch.ones(TEXT_BATCH, TEXT_SEQ, dtype=torch.long)
        mask[1, TEXT_SEQ // 2 :] = 0  # one padded row, as a batch of real sentences has
        return {"input_ids": ids, "attention_mask": mask}
    if "image_size" in config:
        size, channels = int(config["image_size"]), int(config.get("num_channels", 3))
        return {"pixel_values": torch.randn(TEXT_BATCH, channels, size, size, generator=gen)}
    raise InputError(
        f"{path}: cannot make example inputs (config.json has neither vocab_size nor image_size); "
        "use a package.module:factory spec that returns (model, example_inputs)"
    )


def _tokenizer(path: Path) -> Any:
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "vocab.json")
    if not any((path / n).is_file() for n in names):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception:  # noqa: BLE001 - no usable tokenizer: random ids instead
        return None


# -- decoders (tcomp generate) -------------------------------------------------------------------------


@dataclass
class LoadedDecoder:
    """A model to generate with, its tokenizer (None: byte-level text, token = byte % vocab) and
    whether tcomp must be told it is a decoder (plain modules opt in)."""

    name: str
    model: torch.nn.Module
    tokenizer: Any
    vocab: int
    plain: bool


def load_decoder(spec: str, seed: int = 0) -> LoadedDecoder:
    """A causal LM from a Hugging Face folder (``AutoModelForCausalLM``, offline, safetensors only,
    with the folder's tokenizer when it has one), a zoo decoder (``gpt-rope``, ...) or
    ``package.module:factory``."""
    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").is_file() or not list(path.glob("*.safetensors")):
            _from_hf_folder(path, seed)  # raises the folder checks' messages
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
        except Exception as exc:  # noqa: BLE001
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{path}: not a causal language model transformers can load ({first})") from exc
        vocab = int(model.config.vocab_size)
        return LoadedDecoder(path.name, model.eval(), _tokenizer(path), vocab, plain=False)
    loaded = load_spec(spec, seed)
    from tcomp.decoder import is_decoder, speaks_cache

    if not speaks_cache(loaded.model):
        raise InputError(
            f"{spec} is not a decoder tcomp can generate with: give a Hugging Face causal LM folder, a zoo decoder "
            "(gpt-rope, gpt-alibi, gpt-t5, gpt-learned, gpt-gqa) or a factory returning such a model"
        )
    config = getattr(loaded.model, "config", None) or getattr(loaded.model, "cfg", None)
    vocab = int(getattr(config, "vocab_size", 256))
    return LoadedDecoder(loaded.name, loaded.model, None, vocab, plain=not is_decoder(loaded.model))
