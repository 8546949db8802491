"""The Hugging Face face of an optimized decoder: an object ``model.generate()`` can drive.

:func:`hf_decoder` returns an instance of a subclass of the user's model class (so
``GenerationMixin.generate`` with its logits processors, stopping criteria, sampling and left padding
works unchanged) that holds no weights of its own: its ``forward`` runs tcomp's prefill or decode
graph. The cache Hugging Face threads through ``generate`` is replaced by a small host-side object
that records how many slots tcomp's cache holds; the keys and values live in tcomp's buffers.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch

from tcomp.errors import InputError
from tcomp.generation import OptimizedDecoder


@functools.cache
def _state_class() -> type:
    from transformers.cache_utils import Cache

    class TcompCacheState(Cache):
        """Hugging Face's view of tcomp's KV cache: its length. Never compiled (``is_compileable``
        False), so ``generate`` passes 2-D masks that tcomp turns into its own."""

        def __init__(self, runner: OptimizedDecoder) -> None:  # Cache.__init__ is not run: no layers here
            self.runner = runner
            self.length = 0
            self.sequence = -1  # the runner's sequence these slots belong to (set after the first step)
            self.layers = []
            self.offloading = False
            self.tokens: torch.Tensor | None = None  # the token ids of the cached slots, (batch, length)

        def get_seq_length(self, layer_idx: int = 0) -> int:
            return self.length

        def get_max_cache_shape(self, layer_idx: int = 0) -> int:
            return self.runner.max_len

        @property
        def is_compileable(self) -> bool:
            return False

        def __len__(self) -> int:
            return self.runner.n_layers

        def crop(self, tokens_to_remove: int) -> None:
            """Assisted and prompt-lookup decoding: after verifying draft tokens, drop the rejected
            ones (``-n``: the last n; 0: none; a positive value, the legacy form: keep that many).
            The next step starts at the new length and overwrites the slots past it."""
            n = int(tokens_to_remove)
            keep = max(0, self.length + n) if n < 0 else (min(self.length, n) if n > 0 else self.length)
            if keep < self.length and self.runner.recurrent:
                raise InputError(
                    f"dropping the last {self.length - keep} cached tokens (assisted or prompt-lookup decoding): this "
                    "decoder keeps a recurrent state (attention.linear) in place of a KV cache, and a state cannot "
                    "forget tokens. Generate without an assistant or prompt lookup"
                )
            self.length = keep
            if self.tokens is not None:
                self.tokens = self.tokens[:, :keep]

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            """Beam search: row ``i`` of the cache becomes row ``beam_idx[i]`` (keys, values, int8
            scales and the padding of every graph: one cache)."""
            self.runner.reorder_rows(beam_idx)
            if self.tokens is not None:
                self.tokens = self.tokens.index_select(0, beam_idx.to(self.tokens.device))

    return TcompCacheState


class _Face:
    """Mixed in front of the model's class: ``forward`` dispatches to the optimized graphs."""

    tcomp_decoder: OptimizedDecoder

    @property
    def report(self):
        """The prefill graph's report (``decode_report``: the decode graph's)."""
        return self.tcomp_decoder.report

    @property
    def decode_report(self):
        return self.tcomp_decoder.decode_report

    @property
    def plan(self):
        return self.tcomp_decoder.plan

    @property
    def cudagraphs(self) -> str:
        return self.tcomp_decoder.cudagraphs

    def save(self, folder: str) -> str:
        """Write the artifact folder of both graphs (see ``OptimizedDecoder.save``)."""
        return self.tcomp_decoder.save(folder)

    def generate(self, *args: Any, **kwargs: Any):
        """Hugging Face's ``generate``: greedy, sampling, beam search, and assisted / prompt-lookup
        decoding (draft tokens checked in one multi-token step, the rejected ones cropped) run on
        tcomp's graphs. Early-exit self-speculation is refused: it runs the model's own first layers,
        which are inside tcomp's graphs."""
        config = kwargs.get("generation_config")
        if kwargs.get("assistant_early_exit", getattr(config, "assistant_early_exit", None)) is not None:
            raise InputError(
                "assistant_early_exit: early-exit self-speculation runs the model's first layers on their own, which a "
                "tcomp-optimized decoder does not expose; use an assistant_model, prompt_lookup_num_tokens, or none"
            )
        drafts = [k for k in ("assistant_model", "prompt_lookup_num_tokens")
                  if kwargs.get(k, getattr(config, k, None)) is not None]  # fmt: skip
        if drafts and self.tcomp_decoder.recurrent:
            raise InputError(
                f"{drafts[0]}: assisted and prompt-lookup decoding drop the rejected draft tokens from the cache; this "
                "decoder keeps a recurrent state (attention.linear) in place of a KV cache, and a state cannot forget "
                "tokens. Generate without drafts"
            )
        return super().generate(*args, **kwargs)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cache_position: torch.Tensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ):
        if inputs_embeds is not None or input_ids is None:
            raise InputError(
                "this tcomp-optimized decoder takes input_ids (its graphs start at the token embedding); "
                "inputs_embeds are not supported"
            )
        if attention_mask is not None and attention_mask.dim() != 2:
            raise InputError("this tcomp-optimized decoder takes a 2-D attention_mask (batch, tokens so far)")
        runner = self.tcomp_decoder
        state = _state_of(runner, cache if cache is not None else past_key_values)
        start = state.length if cache_position is None else int(cache_position.reshape(-1)[0])
        seen = state.tokens
        if (cache_position is None and start and input_ids.shape[1] > start and seen is not None
                and seen.shape == (input_ids.shape[0], start) and torch.equal(input_ids[:, :start], seen)):  # fmt: skip
            # a model whose generation inputs are not sliced by cache position (MPT) passes the whole
            # sequence again: the new tokens are the ones past those the cache holds
            whole = input_ids.shape[1]
            input_ids = input_ids[:, start:]
            if position_ids is not None and position_ids.shape[-1] == whole:
                position_ids = position_ids[..., start:]
        if start > state.length:
            raise InputError(
                f"cache_position starts at {start} but the cache holds {state.length} tokens of this sequence: "
                "pass the tokens from the first one not in the cache"
            )
        if attention_mask is not None and attention_mask.shape[1] != start + input_ids.shape[1]:
            attention_mask = attention_mask[:, -(start + input_ids.shape[1]) :]
        logits = runner.step(input_ids, attention_mask, position_ids, start=start)
        if start == 0:
            state.tokens = input_ids
        elif seen is not None and seen.shape[1] >= start and seen.shape[0] == input_ids.shape[0]:
            state.tokens = torch.cat([seen[:, :start], input_ids.to(seen.device)], 1)
        else:
            state.tokens = None
        state.length, state.sequence = runner.length, runner.sequence
        return _output(logits, state)


def _state_of(runner: OptimizedDecoder, given: Any):
    """The cache state of this call: ``given`` when it is this decoder's state of its current
    sequence, a new (empty) one when nothing is cached. A cache that holds tokens tcomp's cache no
    longer holds -- another library's cache, or a state whose slots a later sequence overwrote --
    is refused: continuing from it would read the wrong keys and values."""
    state_cls = _state_class()
    if isinstance(given, state_cls) and given.runner is runner:
        if given.length == 0 or (given.sequence == runner.sequence and given.length <= runner.length):
            return given
        raise InputError(
            "this past_key_values belongs to a sequence the decoder has replaced since (it keeps one sequence "
            "at a time in its KV cache): generate again from the whole sequence, without past_key_values"
        )
    held = _cached_tokens(given)
    if held:
        raise InputError(
            f"past_key_values is a {type(given).__name__} holding {held} tokens; a tcomp-optimized decoder keeps "
            "its keys and values in its own KV cache: pass the whole sequence as input_ids, without past_key_values"
        )
    return state_cls(runner)


def _cached_tokens(cache: Any) -> int:
    if cache is None:
        return 0
    try:
        return int(cache.get_seq_length())
    except Exception:  # noqa: BLE001 - legacy tuples and unknown objects: count what they hold
        return 1 if cache else 0


def _output(logits: torch.Tensor, state: Any):
    from transformers.modeling_outputs import CausalLMOutputWithPast

    fields = set(CausalLMOutputWithPast.__dataclass_fields__)
    key = "cache" if "cache" in fields else "past_key_values"
    return CausalLMOutputWithPast(logits=logits, **{key: state})


def hf_decoder(model: torch.nn.Module, runner: OptimizedDecoder) -> torch.nn.Module:
    """A weightless instance of ``type(model)`` whose forward runs ``runner`` (see the module doc)."""
    cls = type(model)
    face_cls = type(f"Tcomp{cls.__name__}", (_Face, cls), {"__module__": __name__, "__doc__": cls.__doc__})
    face = face_cls.__new__(face_cls)
    torch.nn.Module.__init__(face)
    for key, value in model.__dict__.items():
        if key not in face.__dict__:
            face.__dict__[key] = value
    face.config = copy.deepcopy(model.config)
    if getattr(model, "generation_config", None) is not None:
        face.generation_config = copy.deepcopy(model.generation_config)
    face.tcomp_decoder = runner
    return face
