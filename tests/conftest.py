"""Shared test settings: hypothesis profiles ("ci" bounds the suite's time, "thorough" for local
runs), selected with HYPOTHESIS_PROFILE."""

from __future__ import annotations

import os

import torch

# Without a GPU the Triton kernels run under Triton's interpreter on CPU tensors. It is read when a
# kernel is defined, so it is set before any test can generate one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# no autotuning in tests: timing ~10 configurations per new shape makes GPU property tests crawl;
# tests force the configurations they check, and test_gemm opts in where the autotuner is the subject
os.environ.setdefault("TCOMP_AUTOTUNE", "0")

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=False, suppress_health_check=[HealthCheck.too_slow]
)
# GPU runs: every new shape class compiles a kernel (seconds each), so fewer examples
settings.register_profile("gpu", max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "thorough", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# One thread per xdist worker: two workers on two cores, not four threads fighting for them.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))
