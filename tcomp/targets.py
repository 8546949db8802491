"""Hardware targets: peak rates, memory bandwidth, on-chip memory and the default backend.

A :class:`Target` carries datasheet numbers (``peak_flops``, ``bandwidth``) and, where the project
has measured the real machine, ``measured`` ceilings. The roofline (:meth:`Target.flops_per_s`,
:meth:`Target.bytes_per_s`) uses the measured ceiling when there is one and the datasheet otherwise.

Peak rates are dense (no 2:4 sparsity) and keyed by canonical dtype names: ``"fp64"``, ``"fp32"``,
``"tf32"``, ``"bf16"``, ``"fp16"``, ``"fp8"``, ``"int8"`` (int8 in ops/s). Lookups accept a
``torch.dtype`` or an alias such as ``"bfloat16"``. Bandwidth is bytes/s, shared memory is bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Union

import torch

from tcomp.errors import InputError

DtypeKey = Union[torch.dtype, str]

_KB = 1024
_GB = 10**9
_T = 10**12
_G = 10**9

_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "fp64",
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.int8: "int8",
    torch.uint8: "int8",
}
for _name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"):
    if hasattr(torch, _name):
        _DTYPE_NAMES[getattr(torch, _name)] = "fp8"

_ALIASES: dict[str, str] = {
    "float64": "fp64", "double": "fp64", "fp64": "fp64",
    "float32": "fp32", "float": "fp32", "fp32": "fp32",
    "tf32": "tf32", "tensorfloat32": "tf32",
    "bfloat16": "bf16", "bf16": "bf16",
    "float16": "fp16", "half": "fp16", "fp16": "fp16",
    "float8": "fp8", "fp8": "fp8", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8",
    "int8": "int8", "uint8": "int8",
}  # fmt: skip


def dtype_key(dtype: DtypeKey) -> str:
    """Canonical rate key (``"bf16"``, ``"fp32"``, ...) of a torch dtype or a dtype name."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPE_NAMES:
            raise InputError(
                f"no peak-rate class for dtype {dtype}; known: {sorted(set(_DTYPE_NAMES.values()))}"
            )
        return _DTYPE_NAMES[dtype]
    key = _ALIASES.get(str(dtype).lower().removeprefix("torch."))
    if key is None:
        raise InputError(f"unknown dtype name {dtype!r}; use one of {sorted(set(_ALIASES.values()))}")
    return key


def _normalize(rates: Mapping[DtypeKey, float]) -> Mapping[str, float]:
    return MappingProxyType({dtype_key(k): float(v) for k, v in rates.items()})


@dataclass(frozen=True)
class Measured:
    """Ceilings measured on a real machine (what a well-tuned kernel actually reaches).

    ``peak_flops`` need not list every dtype; missing dtypes fall back to the datasheet.
    """

    peak_flops: Mapping[DtypeKey, float] = field(hash=False)
    bandwidth: float
    note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "peak_flops", _normalize(self.peak_flops))


@dataclass(frozen=True)
class Target:
    """A machine tcomp compiles for.

    ``peak_flops`` and ``bandwidth`` are datasheet values; ``measured`` (optional) holds measured
    ceilings that take precedence in the roofline. ``smem_per_sm``, ``sm_count`` and
    ``compute_capability`` are None for CPUs; kernels choose tiles from these properties.
    """

    name: str
    kind: Literal["gpu", "cpu"]
    peak_flops: Mapping[DtypeKey, float] = field(hash=False)
    bandwidth: float
    smem_per_sm: int | None
    sm_count: int | None
    default_backend: str
    description: str
    memory_bytes: int | None = None
    measured: Measured | None = None
    compute_capability: tuple[int, int] | None = None  # CUDA (major, minor); None for CPUs

    @property
    def hopper(self) -> bool:
        """Hopper-class or newer (sm_90+): TMA descriptors, wgmma; the kernels' larger tiles."""
        return self.compute_capability is not None and self.compute_capability >= (9, 0)

    @property
    def ampere(self) -> bool:
        """Ampere-class or newer (sm_80+): bf16 tensor cores, async copies."""
        return self.compute_capability is not None and self.compute_capability >= (8, 0)

    def __post_init__(self) -> None:
        if self.kind not in ("gpu", "cpu"):
            raise InputError(f"target {self.name!r}: kind must be 'gpu' or 'cpu', not {self.kind!r}")
        object.__setattr__(self, "peak_flops", _normalize(self.peak_flops))

    def flops_per_s(self, dtype: DtypeKey) -> float:
        """Roofline compute ceiling for ``dtype``: measured if known, else datasheet."""
        key = dtype_key(dtype)
        if self.measured is not None and key in self.measured.peak_flops:
            return self.measured.peak_flops[key]
        if key not in self.peak_flops:
            raise InputError(
                f"target {self.name!r} has no peak rate for {key}; it lists {sorted(self.peak_flops)}"
            )
        return self.peak_flops[key]

    def bytes_per_s(self) -> float:
        """Roofline memory ceiling: measured if known, else datasheet."""
        return self.measured.bandwidth if self.measured is not None else self.bandwidth


# Datasheet: NVIDIA A100 Tensor Core GPU datasheet (SXM). Dense rates (the 2:4-sparse ones are 2x).
_A100_FLOPS = {"fp64": 9.7 * _T, "fp32": 19.5 * _T, "tf32": 156 * _T, "bf16": 312 * _T, "fp16": 312 * _T,
               "int8": 624 * _T}  # fmt: skip
# Datasheet: NVIDIA H100 Tensor Core GPU datasheet (SXM). H200 SXM has the same compute.
_H100_FLOPS = {"fp64": 34 * _T, "fp32": 67 * _T, "tf32": 494.5 * _T, "bf16": 989 * _T, "fp16": 989 * _T,
               "fp8": 1979 * _T, "int8": 1979 * _T}  # fmt: skip

TARGETS: dict[str, Target] = {}


class UnknownTargetError(InputError, ValueError):
    """``get_target`` was given a name that is not registered; the message lists the valid ones."""


def register_target(target: Target, *, replace: bool = False) -> Target:
    """Add ``target`` to :data:`TARGETS` under ``target.name`` (lowercase); refuses to overwrite
    an existing name unless ``replace=True``."""
    key = target.name.lower()
    if key in TARGETS and not replace:
        raise InputError(f"target {key!r} is already registered; pass replace=True to overwrite it")
    TARGETS[key] = target
    return target


def get_target(name: str | Target) -> Target:
    """The registered target called ``name`` (case-insensitive); a Target is returned as is."""
    if isinstance(name, Target):
        return name
    key = str(name).lower()
    if key not in TARGETS:
        raise UnknownTargetError(f"unknown target {name!r}; valid targets: {', '.join(sorted(TARGETS))}")
    return TARGETS[key]


register_target(Target(
    name="a100", kind="gpu", peak_flops=_A100_FLOPS, bandwidth=2.039 * _T,
    smem_per_sm=164 * _KB, sm_count=108, default_backend="triton", memory_bytes=80 * _GB,
    compute_capability=(8, 0),
    description="NVIDIA A100 80GB SXM (datasheet: 312 TFLOP/s bf16/fp16 dense, 2.039 TB/s HBM2e)",
))  # fmt: skip
register_target(Target(
    name="a100-40gb", kind="gpu", peak_flops=_A100_FLOPS, bandwidth=1.555 * _T,
    smem_per_sm=164 * _KB, sm_count=108, default_backend="triton", memory_bytes=40 * _GB,
    compute_capability=(8, 0),
    description="NVIDIA A100 40GB SXM (datasheet: 312 TFLOP/s bf16/fp16 dense, 1.555 TB/s HBM2)",
))  # fmt: skip
register_target(Target(
    name="h100", kind="gpu", peak_flops=_H100_FLOPS, bandwidth=3.35 * _T,
    smem_per_sm=228 * _KB, sm_count=132, default_backend="triton", memory_bytes=80 * _GB,
    compute_capability=(9, 0),
    description="NVIDIA H100 SXM 80GB (datasheet: 989 TFLOP/s bf16 dense, 3.35 TB/s HBM3)",
))  # fmt: skip
register_target(Target(
    name="h200", kind="gpu", peak_flops=_H100_FLOPS, bandwidth=4.8 * _T,
    smem_per_sm=228 * _KB, sm_count=132, default_backend="triton", memory_bytes=141 * _GB,
    compute_capability=(9, 0),
    measured=Measured(
        peak_flops={"bf16": 780 * _T}, bandwidth=4.2 * _T,
        note="project's H200: bf16 matmul ~780 TFLOP/s, device copy ~4.2 TB/s, "
        "SDPA flash forward ~470 TFLOP/s at head dim 64; other dtypes use the datasheet",
    ),
    description="NVIDIA H200 SXM 141GB (datasheet: H100 SXM compute, 4.8 TB/s HBM3e; "
    "roofline uses measured 780 TFLOP/s bf16 and 4.2 TB/s)",
))  # fmt: skip
register_target(Target(
    name="cpu", kind="cpu",
    peak_flops={"fp64": 50 * _G, "fp32": 100 * _G, "bf16": 100 * _G, "fp16": 100 * _G},
    bandwidth=20 * _GB, smem_per_sm=None, sm_count=None, default_backend="eager",
    description="generic CPU; rough measured-style defaults (100 GFLOP/s fp32, half types computed "
    "through fp32, 20 GB/s), good for ordering choices, not for predicting times",
))  # fmt: skip
