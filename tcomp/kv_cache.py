"""tcomp's static KV cache: what a decoder's attention layers write to and read from while generating.

The cache is preallocated once per (batch, maximum length) in the model's dtype. Its tensors are
buffers of the module tcomp captures (so ``torch.export`` records the in-place ``index_copy_`` that
writes new tokens as a mutation of a named buffer), and the prefill and decode graphs share them.

Models reach it through the cache protocol Hugging Face decoders already speak:
``k_all, v_all = past_key_values.update(k_new, v_new, layer_idx, ...)`` where ``k_new`` is
(B, Hk, n, D) for the ``n`` tokens at ``cache_position`` and ``k_all`` the whole cache
(B, Hk, M, D). Attention over the whole cache is made correct by the mask tcomp builds
(:func:`attention_masks`): a query at cache position ``p`` sees slots ``<= p`` that are not padding
(and, for sliding-window layers, ``> p - window``). A plain ``nn.Module`` generates through tcomp
when its ``forward`` takes ``past_key_values``, ``cache_position`` and a 4-D ``attention_mask``
with that meaning (see ``tcomp.models.gpt``).

Formats (``tcomp.optimize(..., kv_cache=...)``): ``"model"`` keeps keys and values in the model's
dtype; ``"int8"`` stores each written row (one token of one head) as int8 codes with a float32
scale, ``x ≈ q * s``, ``s = max|x| / 127`` (1 for a row of zeros), the format of
:func:`tcomp.quant.quantize_int8` applied per row -- half the bytes of a bf16 cache, a quarter of an
fp32 one. The attention layers read the cache dequantized, ``(q * s)`` in float32 rounded once to the
model's dtype; the canonical form ``tcomp.cached_attention`` then takes the codes and the scales
(the Triton decode kernel reads the codes; its prefill dequantizes once for the flash kernel).
Contract (BOUNDED): every cached element is within ``s / 2`` of the value the model wrote, plus the
float32 roundings of ``x / s`` and ``q * s`` (at most ``2^-17 s`` each for codes up to 127; checked by
tests/generation/test_kv_int8.py), so with ``dk``/``dv`` the largest key/value error of a layer, its
attention output moves by at most ``dv + (exp(2 * scale * |q|_1 * dk) - 1) * max|v|`` per element.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from tcomp.errors import InputError


@dataclass(frozen=True)
class LayerShape:
    """The cache of one attention layer: (batch, kv heads, slots, head dim) for keys and values."""

    kv_heads: int
    k_dim: int
    v_dim: int
    dtype: torch.dtype


def buffer_names(layer: int) -> tuple[str, str]:
    """Names of the key and value buffers of ``layer`` on the captured step module."""
    return f"tcomp_kv_k_{layer}", f"tcomp_kv_v_{layer}"


def scale_names(layer: int) -> tuple[str, str]:
    """Names of the key and value scale buffers of ``layer`` (an int8 cache)."""
    return f"tcomp_kv_ks_{layer}", f"tcomp_kv_vs_{layer}"


def state_names(layer: int) -> tuple[str, str]:
    """Names of the recurrent state and normaliser buffers of ``layer`` when ``attention.linear``
    turned its cache into a state (``tcomp.recurrent_linear_attention``)."""
    return f"tcomp_kv_s_{layer}", f"tcomp_kv_z_{layer}"


def all_names(layer: int) -> tuple[str, ...]:
    """Every cache buffer name ``layer`` may have: keys, values, int8 scales, linear-attention state."""
    return (*buffer_names(layer), *scale_names(layer), *state_names(layer))


def is_buffer_name(name: str) -> bool:
    """Whether ``name`` is one of :func:`all_names` (a cache buffer of a step graph: KV cache, int8
    scales or a linear-attention state)."""
    return re.fullmatch(r"tcomp_kv_(k|v|ks|vs|s|z)_\d+", name) is not None


def is_state_name(name: str) -> bool:
    """Whether ``name`` is a linear-attention state buffer (:func:`state_names`)."""
    return re.fullmatch(r"tcomp_kv_(s|z)_\d+", name) is not None


def has_state(step: torch.nn.Module) -> bool:
    """Whether the step graph ``step`` keeps a linear-attention state (a buffer :func:`is_state_name`)."""
    return any(is_state_name(n) for n, _ in step.named_buffers())


FORMATS = ("model", "int8")


def check_format(fmt: str) -> None:
    """Refuse a cache format that is not one of :data:`FORMATS`, naming them."""
    if fmt not in FORMATS:
        raise InputError(f"kv_cache={fmt!r}: the KV cache formats are {', '.join(map(repr, FORMATS))}")


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 codes, float32 scales of shape (..., 1)) of ``x`` per row of its last dim: ``s =
    max|x| / 127`` (1 where that is 0; NaN where the row holds NaN/inf), codes ``round(x / s)``."""
    xf = x.float()
    amax = xf.abs().amax(-1, keepdim=True)
    s = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    s = torch.where(torch.isfinite(amax), s, torch.full_like(amax, float("nan")))
    q = torch.round(xf / s).clamp(-127, 127).nan_to_num(0.0).to(torch.int8)
    return q, s


def dequantize_rows(q: Tensor, s: Tensor, dtype: torch.dtype) -> Tensor:
    """``q * s`` in float32, rounded once to ``dtype``."""
    return (q.float() * s).to(dtype)


class _Sizes:
    """What Hugging Face models ask of a cache besides ``update()``, answered alike by the shape
    probe and the store: no length of its own (tcomp always passes positions), ``max_len`` slots."""

    max_len: int

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.max_len

    def get_mask_sizes(self, *args, **kwargs) -> tuple[int, int]:
        return self.max_len, 0


class _Probe(_Sizes):
    """Records the shape of every layer's keys and values during one eager forward (no storage)."""

    def __init__(self, max_len: int) -> None:
        self.layers: dict[int, LayerShape] = {}
        self.max_len = max_len

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):
        self.layers[int(layer_idx)] = LayerShape(
            key_states.shape[1], key_states.shape[-1], value_states.shape[-1], key_states.dtype
        )
        # one token (n = 1) seen at every slot: the shapes attention expects of the whole cache
        return key_states[:, :, -1:].expand(-1, -1, self.max_len, -1), value_states[:, :, -1:].expand(
            -1, -1, self.max_len, -1
        )


class _Store(_Sizes):
    """The cache protocol over the buffers of ``owner`` (a module): writes the new tokens at
    ``self.position`` in place and returns the whole cache of the layer (dequantized for int8)."""

    def __init__(self, owner: torch.nn.Module, n_layers: int, max_len: int, fmt: str = "model") -> None:
        self._owner = owner
        self._n_layers = n_layers
        self.max_len = max_len
        self.format = fmt
        self.position: Tensor | None = None

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):
        if self.position is None:
            raise RuntimeError("tcomp KV cache used without a cache position")
        kn, vn = buffer_names(int(layer_idx))
        k, v = getattr(self._owner, kn), getattr(self._owner, vn)
        if self.format == "int8":
            ksn, vsn = scale_names(int(layer_idx))
            ks, vs = getattr(self._owner, ksn), getattr(self._owner, vsn)
            qk, sk = quantize_rows(key_states)
            qv, sv = quantize_rows(value_states)
            k = k.index_copy_(2, self.position, qk)
            ks = ks.index_copy_(2, self.position, sk.to(ks.dtype))
            v = v.index_copy_(2, self.position, qv)
            vs = vs.index_copy_(2, self.position, sv.to(vs.dtype))
            return dequantize_rows(k, ks, key_states.dtype), dequantize_rows(v, vs, value_states.dtype)
        k.index_copy_(2, self.position, key_states.to(k.dtype))
        v.index_copy_(2, self.position, value_states.to(v.dtype))
        return k, v


    def __len__(self) -> int:
        return self._n_layers

    @property
    def is_compileable(self) -> bool:
        return True

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * self._n_layers


@functools.cache
def _with_hf_base(cls: type) -> type:
    """``cls`` with transformers' ``Cache`` as a base when transformers is installed (models check
    ``isinstance(past_key_values, Cache)``), made once; ``Cache.__init__`` is not run (the
    constructors below call ``cls.__init__``), and the methods of ``cls`` win."""
    try:
        from transformers.cache_utils import Cache
    except ImportError:
        return cls
    return type(f"HF{cls.__name__}", (cls, Cache), {})


def make_probe(max_len: int) -> _Probe:
    """The probe object, as a Hugging Face ``Cache`` when transformers is installed."""
    cls = _with_hf_base(_Probe)
    probe = cls.__new__(cls)
    _Probe.__init__(probe, max_len)
    probe.offloading = False
    return probe


def attach(
    owner: torch.nn.Module, shapes: dict[int, LayerShape], batch: int, max_len: int, device: torch.device,
    fmt: str = "model",
) -> _Store:  # fmt: skip
    """Allocate the cache (zeros; a slot is never read before it is written) as buffers of ``owner``
    on ``device`` in format ``fmt`` (:data:`FORMATS`) and return the protocol object that writes into them."""
    check_format(fmt)
    if sorted(shapes) != list(range(len(shapes))):
        raise InputError(f"the model's attention layers wrote the cache for layers {sorted(shapes)}; tcomp expects 0..n-1")
    for i, s in shapes.items():
        kn, vn = buffer_names(i)
        dtype = torch.int8 if fmt == "int8" else s.dtype
        owner.register_buffer(kn, torch.zeros(batch, s.kv_heads, max_len, s.k_dim, dtype=dtype, device=device), persistent=False)
        owner.register_buffer(vn, torch.zeros(batch, s.kv_heads, max_len, s.v_dim, dtype=dtype, device=device), persistent=False)
        if fmt == "int8":
            for name in scale_names(i):
                owner.register_buffer(name, torch.ones(batch, s.kv_heads, max_len, 1, device=device), persistent=False)
    cls = _with_hf_base(_Store)
    store = cls.__new__(cls)
    _Store.__init__(store, owner, len(shapes), max_len, fmt)
    store.layers = []
    store.offloading = False
    return store


def attention_masks(
    cache_position: Tensor,
    padding: Tensor,
    *,
    windows: dict[str, int | None],
    dtype: torch.dtype | None,
) -> dict[str, Tensor]:
    """One (B, 1, n, M) mask per layer type: a query at cache position ``p`` may read slot ``j`` when
    ``j <= p``, ``j`` is not padding (``padding[b, j]`` is 1 for real tokens) and, for a window
    ``w``, ``j > p - w``. A query always reads its own slot, so padding rows stay finite.
    ``dtype`` None gives bool masks (True = attend), a float dtype additive masks (0 or the dtype's
    minimum, as Hugging Face's eager attention expects)."""
    M = padding.shape[1]
    j = torch.arange(M, device=cache_position.device)
    p = cache_position[:, None]  # (n, 1)
    own = j[None, :] == p
    real = padding.to(torch.bool)[:, None, None, :]  # (B, 1, 1, M)
    out = {}
    for kind, w in windows.items():
        seen = j[None, :] <= p
        if w is not None:
            seen = seen & (j[None, :] > p - w)
        allowed = (seen[None, None] & real) | own[None, None]
        if dtype is None:
            out[kind] = allowed
        else:
            zero = torch.zeros((), dtype=dtype, device=allowed.device)
            out[kind] = torch.where(allowed, zero, torch.finfo(dtype).min)
    return out
