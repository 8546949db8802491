"""Launch configurations of the generated kernels per target: block sizes, warps, stages."""

from __future__ import annotations

from dataclasses import dataclass

from tcomp.targets import Target


@dataclass(frozen=True)
class AttnConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def pow2(n: int, lo: int = 16) -> int:
    """The smallest power of two >= ``n`` and >= ``lo`` (a power of two): tile sizes, and the
    buckets of the autotuner's keys."""
    p = lo
    while p < n:
        p *= 2
    return p


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ints: the number of tiles of size ``b`` covering ``a``."""
    return (a + b - 1) // b


def attention_config(target: Target, head_dim: int, n: int, m: int, interpreting: bool) -> AttnConfig:
    """Tiles for one attention launch. Under the interpreter (CPU tests) the cost grows with the
    number of programs, so tiles are as large as the sequence allows; on GPUs they follow the
    FlashAttention-2 shapes that fit the target's shared memory (Hopper, Ampere) for the head dim."""
    if interpreting:
        return AttnConfig(min(64, pow2(n)), min(64, pow2(m)), 4, 1)
    smem = target.smem_per_sm or 0
    if target.hopper and smem >= 200 * 1024:
        # best of a 36-config sweep on the H200 at N=4096, bf16 (bench/attention.py --sweep,
        # bench/results/attention-h200.json), causal and not alike
        if head_dim <= 64:
            return AttnConfig(128, 64, 8, 3)
        return AttnConfig(128, 128, 8, 3)
    if target.ampere and smem >= 160 * 1024:
        return AttnConfig(128, 64, 4 if head_dim <= 64 else 8, 2)
    return AttnConfig(64, 64, 4, 2)


@dataclass(frozen=True)
class QConfig:
    """One launch of a weight-only low-bit kernel: tiles, K splits, warps and pipeline stages.
    ``block_m == 1`` is the GEMV kernel (backends/triton/gemv_template.py: one activation row per
    program, no ``tl.dot``); otherwise the tensor-core GEMM (quant_template.py)."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 4

    @property
    def name(self) -> str:
        return (
            f"m{self.block_m}_n{self.block_n}_k{self.block_k}_s{self.split_k}"
            f"_w{self.num_warps}_st{self.num_stages}"
        )

    @staticmethod
    def parse(name: str) -> QConfig:
        return QConfig(*(int(part.lstrip("mnkswt")) for part in name.split("_")))


@dataclass(frozen=True)
class DecodeConfig:
    """One launch of the split-KV decode kernel (backends/triton/decode_attention_template.py):
    keys per tile, the number of splits of the valid keys (the grid's second axis), warps, stages."""

    block_n: int
    splits: int
    num_warps: int = 4
    num_stages: int = 2

    @property
    def name(self) -> str:
        return f"n{self.block_n}_s{self.splits}_w{self.num_warps}_st{self.num_stages}"


def decode_config(target: Target, groups: int, m: int, head_dim: int, interpreting: bool) -> DecodeConfig:
    """Tiles and splits of one decode launch with ``groups`` programs per split (batch x kv heads x
    row blocks) over a cache of ``m`` slots. On a GPU the splits fill the SMs about twice at any
    batch (two programs of 64-key bf16 tiles and 3 stages fit one Hopper SM); they depend on shapes
    and the target only, never on ``kv_len``, so one CUDA graph serves every length. Under the
    interpreter (whose cost grows with the programs), large tiles and two splits."""
    if interpreting:
        block_n = min(64, pow2(m))
        return DecodeConfig(block_n, min(2, cdiv(m, block_n)), 4, 1)
    block_n = 64 if head_dim <= 128 else 32
    splits = max(1, min(cdiv(2 * (target.sm_count or 1), groups), cdiv(m, block_n), 256))
    stages = 3 if target.hopper or target.ampere else 2
    return DecodeConfig(block_n, splits, 4, stages)
