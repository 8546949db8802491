"""Targets: datasheet numbers, measured ceilings, lookup and registration."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tcomp.errors import InputError
from tcomp.targets import (
    TARGETS,
    Measured,
    Target,
    UnknownTargetError,
    dtype_key,
    get_target,
    register_target,
)


def test_known_targets_are_registered():
    assert {"a100", "a100-40gb", "h100", "h200", "cpu"} <= set(TARGETS)


def test_a100_datasheet_numbers():
    t = get_target("a100")
    assert t.kind == "gpu" and t.default_backend == "triton"
    assert t.flops_per_s(torch.bfloat16) == pytest.approx(312e12)
    assert t.flops_per_s("fp16") == pytest.approx(312e12)
    assert t.flops_per_s(torch.float32) == pytest.approx(19.5e12)
    assert t.flops_per_s("tf32") == pytest.approx(156e12)
    assert t.flops_per_s(torch.int8) == pytest.approx(624e12)
    assert t.bytes_per_s() == pytest.approx(2.039e12)
    assert (t.sm_count, t.smem_per_sm) == (108, 164 * 1024)
    assert get_target("a100-40gb").bandwidth == pytest.approx(1.555e12)


def test_h100_and_h200():
    h100, h200 = get_target("H100"), get_target("h200")
    assert h100.flops_per_s("bf16") == pytest.approx(989e12)
    assert h100.flops_per_s("fp8") == pytest.approx(1979e12)
    assert h100.flops_per_s(torch.float8_e4m3fn) == pytest.approx(1979e12)
    assert (h100.sm_count, h100.smem_per_sm) == (132, 228 * 1024)
    # h200: datasheet kept, roofline uses the measured ceilings
    assert h200.peak_flops["bf16"] == h100.peak_flops["bf16"]
    assert h200.bandwidth == pytest.approx(4.8e12)
    assert h200.flops_per_s(torch.bfloat16) == pytest.approx(780e12)
    assert h200.bytes_per_s() == pytest.approx(4.2e12)
    assert h200.flops_per_s("fp8") == pytest.approx(1979e12)  # not measured: datasheet


def test_cpu_target():
    t = get_target("cpu")
    assert t.kind == "cpu" and t.default_backend == "eager"
    assert t.flops_per_s(torch.float32) == pytest.approx(100e9)
    assert t.bytes_per_s() == pytest.approx(20e9)
    assert t.sm_count is None


def test_unknown_target_lists_valid_names():
    with pytest.raises(UnknownTargetError) as e:
        get_target("tpu-v9")
    msg = str(e.value)
    assert "tpu-v9" in msg
    for name in ("a100", "h100", "h200", "cpu"):
        assert name in msg
    assert isinstance(e.value, InputError) and isinstance(e.value, ValueError)


def test_missing_dtype_rate_is_a_clear_error():
    with pytest.raises(InputError, match="fp8"):
        get_target("a100").flops_per_s("fp8")


def test_get_target_passes_targets_through_and_register():
    t = Target(
        "toy",
        "gpu",
        {torch.float16: 1e12},
        1e11,
        1024,
        2,
        "triton",
        "a toy",
        measured=Measured({"fp16": 5e11}, 5e10),
    )
    assert get_target(t) is t
    assert t.peak_flops == {"fp16": 1e12}  # torch dtype keys are normalized
    try:
        register_target(t)
        assert get_target("TOY") is t
        with pytest.raises(InputError, match="already registered"):
            register_target(t)
        register_target(t, replace=True)
        assert t.flops_per_s("half") == 5e11 and t.bytes_per_s() == 5e10
    finally:
        TARGETS.pop("toy", None)


def test_target_is_frozen_and_hashable():
    t = get_target("h100")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.bandwidth = 1.0  # type: ignore[misc]
    assert hash(t) == hash(get_target("h100"))


def test_dtype_key_aliases():
    assert dtype_key("bfloat16") == dtype_key(torch.bfloat16) == "bf16"
    assert dtype_key("torch.float32") == "fp32"
    with pytest.raises(InputError):
        dtype_key("fp4")
