"""Every ``node.meta`` key that tcomp reads or writes: one constant, one comment each.

Keys torch itself writes are listed too, so passes never spell a string by hand.
"""

from __future__ import annotations

# -- written by torch.export / FakeTensor propagation --------------------------------------------
VAL = "val"  # FakeTensor (or SymInt / tuple of them) describing the node's output shape and dtype
STACK_TRACE = "stack_trace"  # user source lines that produced the node (for error messages)
NN_MODULE_STACK = "nn_module_stack"  # {key: (module path, module type)} of the modules around the node

# -- written by tcomp -------------------------------------------------------------------------------
ATTN_SPELLING = "tcomp_attn_spelling"  # str: how the attention site was written ("sdpa", "decomposed", ...)
ATTN_SOURCE = "tcomp_attn_source"  # str: module path of the attention site in the user's model
ATTN_LAYER = "tcomp_attn_layer"  # int: index of the attention site in graph order (0-based)
REWRITTEN_BY = "tcomp_rewritten_by"  # str: name of the pass that created the node
ATTN_PROJ = (
    "tcomp_attn_proj"  # on a tcomp.attention node: {"q"|"k"|"v": name of the linear/addmm that projects it}
)
PROJ_ROLE = (
    "tcomp_proj_role"  # on a linear/addmm node: "q", "k", "v" or a fused "qkv"/"kv"/"qk", and the site index
)
LINEAR_FEATURE_MAP = (
    "tcomp_linear_feature_map"  # on a tcomp.linear_attention node: {"feature_map": name, "layer": site index}
)
SOFT_LANDMARKS = "tcomp_soft_landmarks"  # on a softmax-free site's output node: number of landmarks and the Newton residual
QUANT = "tcomp_quant"  # on a linear_int8w/int4w/w8a8/w1/w1a1 or fp8_linear node: {"format", "source" module path, "max_err" in scales, "rounds_activations"}
KV_CACHE = "tcomp_kv_cache"  # on a get_attr node of a decoder's static KV cache buffer: {"layer": int, "kind": "k" | "v" | "ks" | "vs" (int8 scales) | "s" | "z" (a linear-attention state and its normaliser)}
CACHE_POSITION = "tcomp_cache_position"  # on the placeholder of a decoder graph's cache positions (n,) int64: True
STEP_PADDING = "tcomp_step_padding"  # on the placeholder of a decoder graph's padding (B, max_len), 1 = real token: True
