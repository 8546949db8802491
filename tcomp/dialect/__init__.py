"""The tcomp dialect: canonical ops as ``torch.library`` custom ops (namespace ``tcomp``), one file
per op family. Each file holds, for its ops, the custom op with its reference implementation
(plain PyTorch, exact in float64 on the CPU), its fake kernel (shape propagation and export) and
its node predicate. Importing this package registers every op (``torch.ops.tcomp.*``).

Passes produce these ops; backends lower them (``@backend.implements(op, ...)`` in the kernel's
own file). Nothing else needs editing to add an op.
"""

from tcomp.dialect.attention import attention, attention_nodes, is_attention
from tcomp.dialect.fused import bias_gelu, skip_layer_norm
from tcomp.dialect.linear_attention import is_linear_attention, linear_attention
from tcomp.dialect.qlinear import fp8_linear, linear_int4w, linear_int8w, linear_w1, linear_w1a1, linear_w8a8
from tcomp.dialect.rpe import (
    is_rpe_linear_attention,
    rpe_feature_chunk,
    rpe_linear_attention,
    rpe_weights,
    toeplitz_conv,
    toeplitz_spectrum,
)
from tcomp.dialect.token_merge import is_token_merge, merge_plan, merged_sizes, token_merge

__all__ = [
    "attention", "attention_nodes", "bias_gelu", "fp8_linear", "is_attention", "is_linear_attention",
    "is_rpe_linear_attention", "is_token_merge", "linear_attention", "linear_int4w", "linear_int8w",
    "linear_w1", "linear_w1a1", "linear_w8a8", "merge_plan", "merged_sizes", "rpe_feature_chunk",
    "rpe_linear_attention", "rpe_weights", "skip_layer_norm", "toeplitz_conv", "toeplitz_spectrum",
    "token_merge",
]  # fmt: skip
