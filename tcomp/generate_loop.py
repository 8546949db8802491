"""``tcomp.generate``: the generation loop over an optimized decoder (greedy or sampling), with
the checks of its options. The decoder's graphs and cache are :mod:`tcomp.generation`'s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tcomp.errors import InputError
from tcomp.generation import OptimizedDecoder


@torch.no_grad()  # as Hugging Face's generate: inference only, so the CUDA graphs replay
def generate(
    model: OptimizedDecoder | torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
    on_token: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens after ``input_ids`` (b, n) with an optimized decoder.

    Greedy by default; ``do_sample=True`` samples from softmax(logits / temperature), restricted to
    the ``top_k`` most likely tokens (None or 0: all) and the smallest set of probability ``top_p``
    (in [0, 1]; None or 1: all), drawing from a generator seeded with ``seed`` (None: torch's global
    generator, as ``torch.manual_seed`` leaves it). A row stops at ``eos_token_id`` (an id or a
    list; None: the model's ``generation_config`` -- a saved and loaded decoder keeps its ids -- , ``[]``: never) and is filled
    with ``pad_token_id`` afterwards (None: the generation config's, else the first eos id, else 0);
    the loop stops when every row has. ``attention_mask`` marks left padding (0). Returns
    (b, n + generated), at most n + ``max_new_tokens`` columns; the cache needs
    n + ``max_new_tokens`` - 1 slots (the last token is not run). ``on_token(i)`` is called after
    each new token (progress bars)."""
    runner = _runner_of(model)
    _check_sampling(max_new_tokens, do_sample, temperature, top_k, top_p)
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise InputError(f"input_ids must be (batch, tokens) with a token or more, got shape {tuple(input_ids.shape)}")
    device = runner.padding.device
    input_ids = input_ids.to(device)
    b, n = input_ids.shape
    if max_new_tokens == 0:
        return input_ids
    if n + max_new_tokens - 1 > runner.max_len:
        raise InputError(
            f"a prompt of {n} tokens plus max_new_tokens={max_new_tokens} needs {n + max_new_tokens - 1} KV-cache "
            f"slots, above the {runner.max_len} this decoder has; call tcomp.optimize(..., "
            f"max_len={n + max_new_tokens - 1}) or generate fewer tokens"
        )
    config = getattr(model, "generation_config", None)
    eos, pad = _stop_tokens(runner if config is None else config, eos_token_id, pad_token_id)
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
    mask = torch.ones(b, n, dtype=torch.long, device=device) if attention_mask is None else attention_mask.to(device).long()
    out = input_ids
    done = torch.zeros(b, dtype=torch.bool, device=device)
    logits = runner.step(input_ids, mask, _positions(mask, 0), start=0)[:, -1]
    eos_t = torch.tensor(eos, device=device) if eos else None
    for i in range(max_new_tokens):
        nxt = _choose(logits.float(), do_sample, temperature, top_k, top_p, gen)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        out = torch.cat([out, nxt[:, None]], dim=1)
        if eos_t is not None:
            done = done | torch.isin(nxt, eos_t)
        if on_token is not None:
            on_token(i)
        if i == max_new_tokens - 1 or (eos_t is not None and bool(done.all())):
            break
        mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype, device=device)], dim=1)
        logits = runner.step(nxt[:, None], mask, _positions(mask, mask.shape[1] - 1))[:, -1]
    return out


def _positions(mask: torch.Tensor, start: int) -> torch.Tensor:
    """Position of each token from ``start`` on: the number of real tokens before it (left padding
    does not count), as Hugging Face's generate computes them."""
    return (mask.cumsum(-1) - 1).clamp(min=0)[:, start:]


def _runner_of(model: Any) -> OptimizedDecoder:
    if isinstance(model, OptimizedDecoder):
        return model
    runner = getattr(model, "tcomp_decoder", None)
    if isinstance(runner, OptimizedDecoder):
        return runner
    raise InputError(
        f"tcomp.generate needs a decoder optimized by tcomp.optimize (got {type(model).__name__}); "
        "optimize a causal LM first: fast = tcomp.optimize(model, {'input_ids': ids})"
    )


def _check_sampling(max_new_tokens, do_sample, temperature, top_k, top_p) -> None:
    if max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if do_sample and temperature <= 0:
        raise InputError(f"temperature must be > 0 when sampling, got {temperature} (do_sample=False is greedy)")
    if top_k is not None and top_k < 0:
        raise InputError(f"top_k must be >= 0 (0 or None: every token), got {top_k}")
    if top_p is not None and not 0.0 <= top_p <= 1.0:
        raise InputError(f"top_p must be in [0, 1] (1 or None: every token), got {top_p}")


def _stop_tokens(config: Any, eos_token_id, pad_token_id) -> tuple[list[int], int]:
    """The eos ids and the pad id: the ones given, else ``config``'s (the Hugging Face face's
    generation config, or the decoder's ids recorded from it at optimize and kept by save/load),
    else no eos and pad 0."""
    if eos_token_id is None:
        eos_token_id = getattr(config, "eos_token_id", None)
    if pad_token_id is None:
        pad_token_id = getattr(config, "pad_token_id", None)
    eos = [] if eos_token_id is None else [int(t) for t in torch.tensor(eos_token_id).reshape(-1).tolist()]
    return eos, int(pad_token_id) if pad_token_id is not None else (eos[0] if eos else 0)


def _choose(logits, do_sample, temperature, top_k, top_p, gen) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=gen)[:, 0]
