"""tcomp's passes, one per file. Importing this package registers them all."""

from tcomp.passes import (  # noqa: F401
    binarize,
    canonicalize,
    linear_attention,
    quantize_fp8,
    quantize_int4_gptq,
    quantize_int4_weight,
    quantize_int8_dynamic,
    quantize_int8_weight,
    rasp_extract,
    rpe_fft,
    softmax_free,
    token_merge,
)
