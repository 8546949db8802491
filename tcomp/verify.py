"""Equivalence checking against a float64 reference.

The reference is the user's model (a private copy) run in float64 on the CPU. A candidate's error
is the largest relative error ``||out - ref|| / ||ref||`` over the floating-point leaves of its
output; a NaN or inf where the reference is finite counts as infinite error (NaN never passes).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

from tcomp.errors import InputError


def _is_float(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def to_dtype(tree: Any, dtype: torch.dtype) -> Any:
    """Cast every floating tensor leaf of a pytree to ``dtype`` (others untouched)."""
    return pytree.tree_map(lambda x: x.to(dtype) if _is_float(x) else x, tree)


def _cpu64(tree: Any) -> Any:
    """Inputs for the float64 CPU reference: every tensor on the CPU, floats in float64."""
    return to_dtype(
        pytree.tree_map(lambda x: x.cpu() if isinstance(x, torch.Tensor) else x, tree), torch.float64
    )


def float_leaves(tree: Any) -> list[torch.Tensor]:
    return [x for x in pytree.tree_leaves(tree) if _is_float(x)]


def rel_error(out: Any, ref: Any) -> float:
    """Max over float leaves of ||out - ref|| / ||ref|| (float64). Structure mismatch or NaN -> inf."""
    outs, refs = float_leaves(out), float_leaves(ref)
    if len(outs) != len(refs):
        return math.inf
    worst = 0.0
    for o, r in zip(outs, refs):
        if o.shape != r.shape:
            return math.inf
        o64, r64 = o.detach().to(torch.float64).cpu(), r.detach().to(torch.float64).cpu()
        if not torch.isfinite(o64).all():
            return math.inf
        denom = r64.norm().item()
        num = (o64 - r64).norm().item()
        err = num / denom if denom > 0 else num
        worst = max(worst, err)
    return worst


def dtype_of(tree: Any) -> torch.dtype:
    """Floating dtype of the first float leaf (the precision a model runs in), float32 if none."""
    leaves = float_leaves(tree)
    return leaves[0].dtype if leaves else torch.float32


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def reference_model(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 CPU copy of ``model`` in eval mode (the user's model is not touched).

    Each parameter and buffer is copied straight to the CPU in float64, one at a time, and the
    module structure is deep-copied around those copies (shared tensors stay shared): a model on
    the GPU is never duplicated there, and no full copy in its own dtype is made on the way (an 8B
    bf16 model: 64 GB of float64 at the peak, not 16 GB more on the GPU and 16 GB more on the CPU)."""
    _check_host_memory(model)
    memo: dict[int, Any] = {}
    for t in (*model.parameters(), *model.buffers()):
        if id(t) in memo:
            continue
        dtype = torch.float64 if t.is_floating_point() else t.dtype
        c = t.detach().to("cpu", dtype, copy=True)  # always a copy: reference runs write buffers (caches)
        memo[id(t)] = torch.nn.Parameter(c, requires_grad=t.requires_grad) if isinstance(t, torch.nn.Parameter) else c
    ref = copy.deepcopy(model, memo).eval().cpu()
    _float64_implementations(ref)
    return ref.to(torch.float64)


def _float64_implementations(ref: torch.nn.Module) -> None:
    """Switch the copy's implementation choices that have no float64 kernel to their plain form
    (the same arithmetic): Hugging Face's mixture-of-experts ``grouped_mm`` / ``batched_mm`` experts
    become the per-expert loop."""
    for m in ref.modules():
        config = getattr(m, "config", None)
        if getattr(config, "_experts_implementation", None) not in (None, "eager"):
            config._experts_implementation = "eager"


def host_memory_available() -> int | None:
    """Bytes of memory the OS can give this process now (Linux ``MemAvailable``), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _check_host_memory(model: torch.nn.Module) -> None:
    """Refuse, before copying anything, a float64 reference that cannot fit in host memory (an 8B
    model needs 64 GB): the message says what it needs and what to pass instead of failing later
    with the process killed."""
    seen, need = set(), 0
    for t in (*model.parameters(), *model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            need += t.numel() * (8 if t.is_floating_point() else t.element_size())
    have = host_memory_available()
    if have is not None and need > have:
        raise InputError(
            f"verify=True checks every rewrite against a float64 copy of {type(model).__name__} on the CPU: "
            f"{need / 2**30:.1f} GiB, and this machine has {have / 2**30:.1f} GiB available. Pass verify=False "
            "(passes are then applied without an error measurement: the report shows none) or optimize on a machine "
            "with more memory"
        )


def sample_inputs(args: tuple, kwargs: dict, n: int, seed: int) -> list[tuple[tuple, dict]]:
    """The example inputs plus ``n - 1`` fresh random draws shaped like them.

    Float tensors are redrawn with the example's mean and std; integer tensors with more than two
    distinct values (token ids) are redrawn uniformly in the example's [min, max]; integer and bool
    tensors with at most two values (masks) are kept as they are.
    """
    samples = [(args, kwargs)]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(max(0, n - 1)):

        def redraw(x: Any) -> Any:
            if not isinstance(x, torch.Tensor) or x.numel() == 0:
                return x
            if x.is_floating_point():
                xf = x.detach().to(torch.float64)
                std = xf.std().item() if x.numel() > 1 else 1.0
                std = std if std > 0 else 1.0
                r = torch.randn(x.shape, generator=gen, dtype=torch.float64) * std + xf.mean().item()
                return r.to(x.dtype).to(x.device)
            if x.dtype == torch.bool or x.unique().numel() <= 2:
                return x
            lo, hi = int(x.min()), int(x.max())
            return torch.randint(lo, hi + 1, x.shape, generator=gen, dtype=x.dtype).to(x.device)

        samples.append(pytree.tree_map(redraw, (args, kwargs)))
    return samples


@dataclass
class Reference:
    """Float64 reference outputs for a fixed list of inputs, and the original model's own error."""

    inputs: list[tuple[tuple, dict]]
    outputs: list[Any]
    dtype: torch.dtype
    base_error: float  # the original model's error vs float64, in its own dtype

    @classmethod
    def build(
        cls, model: torch.nn.Module, args: tuple, kwargs: dict, *, samples: int = 2, seed: int = 0
    ) -> Reference:
        inputs = sample_inputs(args, kwargs, samples, seed)
        ref_model = reference_model(model)
        with torch.no_grad():
            outs = [ref_model(*_cpu64(a), **_cpu64(k)) for a, k in inputs]
        del ref_model
        model_copy = copy.deepcopy(model).eval()
        with torch.no_grad():
            own = [model_copy(*a, **k) for a, k in inputs]
        dtype = dtype_of(own[0])
        base = max(rel_error(o, r) for o, r in zip(own, outs))
        return cls(inputs=inputs, outputs=outs, dtype=dtype, base_error=base)

    def run(self, fn: Callable) -> list[Any]:
        with torch.no_grad():
            return [fn(*a, **k) for a, k in self.inputs]

    def error(self, fn: Callable) -> float:
        """Worst relative error of ``fn`` over the reference inputs."""
        return self.error_of(self.run(fn))

    def error_of(self, outs: list[Any]) -> float:
        """Worst relative error of outputs already computed on the reference inputs."""
        return max(rel_error(o, r) for o, r in zip(outs, self.outputs))

    def fp_tolerance(self, factor: float = 4.0) -> float:
        """FP_EQUIVALENT tolerance: a small multiple of the original's own error in its dtype,
        never below a few ulps of that dtype."""
        return max(factor * self.base_error, 16 * eps(self.dtype))


def bitwise_equal(a: Any, b: Any) -> bool:
    """EXACT check: same structure and bitwise-identical tensors (NaN compares equal to NaN)."""
    la, lb = pytree.tree_leaves(a), pytree.tree_leaves(b)
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor):
            if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(_bits(x), _bits(y)):
                return False
        elif x != y:
            return False
    return True


def _bits(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().contiguous().reshape(-1)
    return x.view(torch.uint8) if x.is_floating_point() else x
