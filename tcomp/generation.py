"""Running an optimized decoder: the two graphs over one cache.

:class:`OptimizedDecoder` owns the prefill and decode graphs (rewritten and lowered by the same
plan), the KV-cache buffers they share and the host-side state of the sequence being generated
(how many slots are filled, by how many rows, which are left padding). Called like the model --
``fast(input_ids, attention_mask=...)`` -- it starts a new sequence and returns the logits of every
position; ``fast.step(...)`` continues it. ``tcomp.generate`` (:mod:`tcomp.generate_loop`) is the
loop, ``tcomp.hf_face`` the object Hugging Face's ``model.generate()`` drives.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from tcomp import kv_cache
from tcomp.errors import InputError
from tcomp.graph import written_attributes


class OptimizedDecoder(torch.nn.Module):
    """A decoder compiled for generation: ``prefill`` (n >= 2 tokens) and ``decode`` (one token)
    graphs over a static KV cache of ``batch`` rows and ``max_len`` slots.

    The graphs are the fx GraphModules ``tcomp.optimize`` returns, or any modules with the same
    call and tensor names (the generated ``Program`` modules of a saved folder: ``tcomp.load``).
    ``report`` / ``decode_report`` are each graph's :class:`tcomp.report.Report`; for a decoder
    loaded from a folder they are the saved ``report.json`` dicts."""

    def __init__(
        self,
        prefill: torch.nn.Module,
        decode: torch.nn.Module,
        *,
        batch: int,
        max_len: int,
        n_layers: int,
        report: Any,
        decode_report: Any,
        target: Any,
        model_name: str,
        cudagraphs: bool = False,
        decode_buckets: dict[int, torch.nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.prefill_module = prefill
        self.decode_module = decode
        # decode graphs for fewer rows (batch -> module), over the first rows of the same cache
        self.decode_buckets = torch.nn.ModuleDict({str(b): m for b, m in sorted((decode_buckets or {}).items())})
        self.bucket_reports: dict[int, Any] = {}
        self.batch, self.max_len, self.n_layers = batch, max_len, n_layers
        self.report, self.decode_report, self.target = report, decode_report, target
        self.plan = None  # the tcomp.plan.Plan that produced it (set by optimize)
        # the model's generation config's ids at optimize (tcomp.generate's defaults; saved and loaded)
        self.eos_token_id: int | list[int] | None = None
        self.pad_token_id: int | None = None
        self._model_name = model_name
        share_tensors(prefill, decode)
        for m in self.decode_buckets.values():
            share_tensors(prefill, m)  # weights; the cache rows are bound as views next
        self._bind_buckets()
        # a layer keeps a recurrent state (attention.linear) in place of a KV cache: the sequence can
        # then only go on or start again, never step back (fixed by the graphs: read once, not per step)
        self.recurrent = kv_cache.has_state(prefill)
        self.length = 0  # slots filled in the current sequence
        self.rows = 0  # batch rows of the current sequence
        self.sequence = 0  # counts the sequences started (prefills at slot 0): stale cache states show
        device = next(iter(prefill.buffers())).device
        self.register_buffer("padding", torch.ones(batch, max_len, dtype=torch.long, device=device), persistent=False)
        self._decode_runner = self._prefill_runner = None
        self._bucket_runners: dict[int, Any] = {}
        if cudagraphs:
            from tcomp.cudagraphs import CudaGraphRunner

            def runner(m: torch.nn.Module) -> CudaGraphRunner:
                return CudaGraphRunner(m, lambda: [*m.parameters(), *m.buffers()])

            self._decode_runner, self._prefill_runner = runner(decode), runner(prefill)
            self._bucket_runners = {int(b): runner(m) for b, m in self.decode_buckets.items()}
        self.last_graph = None  # which graph the last step ran: "prefill", "decode" or "decode[b=N]"

    # ------------------------------------------------------------------ the two graphs
    @property
    def graph_module(self) -> torch.nn.Module:
        return self.prefill_module

    @property
    def code(self) -> str:
        return getattr(self.prefill_module, "code", "")

    @property
    def cudagraphs(self) -> str:
        """"on" (every graph replayed as CUDA graphs), "off", or why a graph runs directly."""
        if self._decode_runner is None:
            return "off"
        runners = [("decode", self._decode_runner), ("prefill", self._prefill_runner)]
        runners += [(f"decode[b={b}]", r) for b, r in self._bucket_runners.items()]
        why = [f"{name}: {r.disabled}" for name, r in runners if r is not None and r.disabled]
        return "; ".join(why) or "on"

    def _bind_buckets(self) -> None:
        """Point every bucket graph's KV-cache buffers at the first rows of the prefill graph's
        (views: one cache, whichever graph writes it)."""
        cache = {n: t for n, t in self.prefill_module.named_buffers() if kv_cache.is_buffer_name(n)}
        for m in self.decode_buckets.values():
            for name, t in list(m.named_buffers()):
                if kv_cache.is_buffer_name(name) and name in cache:
                    mod_name, _, attr = name.rpartition(".")
                    owner = m.get_submodule(mod_name) if mod_name else m
                    owner._buffers[attr] = cache[name][: t.shape[0]]

    @torch.no_grad()
    def reorder_rows(self, index: torch.Tensor) -> None:
        """Row ``i`` of the cache (every graph's KV buffers, scales and padding) becomes row
        ``index[i]``, for the first ``len(index)`` rows: what beam search does when it keeps, drops
        and duplicates hypotheses."""
        index = index.to(self.padding.device).long()
        n = index.numel()
        if n > self.batch:
            raise InputError(f"reordering {n} rows of a cache of {self.batch}")
        cache = [t for name, t in self.prefill_module.named_buffers() if kv_cache.is_buffer_name(name)]
        for t in [*cache, self.padding]:  # the other graphs hold these tensors or views of them
            t[:n] = t.index_select(0, index)

    def reset(self) -> None:
        """Forget the current sequence (the cache slots are overwritten by the next prefill)."""
        self.length = self.rows = 0
        self.sequence += 1
        self.padding.fill_(1)

    @torch.no_grad()
    def step(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *,
        start: int | None = None,
    ) -> torch.Tensor:
        """Run ``input_ids`` (b, n) at slots ``start .. start+n-1`` (default: after the filled ones)
        and return their logits (b, n, vocab). ``attention_mask`` (b, start+n): 1 for real tokens,
        0 for left padding (the whole sequence so far, as Hugging Face passes it); ``position_ids``
        default to the slot numbers (as the models' own forward does; generation passes the count
        of real tokens before each one). Inference only: it runs under ``torch.no_grad()`` (the
        steps write the cache in place, and the CUDA graphs replay only without autograd), so a
        model whose parameters require grad -- any freshly loaded one -- still replays."""
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise InputError(
                f"input_ids must be (batch, tokens) with a token or more, got shape {tuple(input_ids.shape)}"
            )
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise InputError(  # else the embedding kernel fails on it
                f"input_ids has dtype {input_ids.dtype}; token ids are integers: pass input_ids.long()"
            )
        b, n = input_ids.shape
        start = self.length if start is None else int(start)
        self._check_step(b, n, start, attention_mask, position_ids)
        device = self.padding.device
        input_ids = input_ids.to(device)
        if start == 0:  # a new sequence: the old one is gone whether or not this step succeeds
            self.length = self.rows = 0
            self.sequence += 1
            self.padding.fill_(1)
        if attention_mask is not None:
            self.padding[:b, : start + n].copy_(attention_mask.to(device))
        if position_ids is None:  # as the models' own forward: slot numbers, padding or not
            position_ids = torch.arange(start, start + n, device=device)[None].expand(b, n)
        position_ids = position_ids.to(device).long().expand(b, n)
        if b < self.batch:  # rows past b repeat row 0 (their outputs are dropped)
            fill = self.batch - b
            input_ids = torch.cat([input_ids, input_ids[:1].expand(fill, n)])
            position_ids = torch.cat([position_ids, position_ids[:1].expand(fill, n)])
            self.padding[b:].copy_(self.padding[:1].expand(fill, -1))
        bucket = min((int(k) for k in self.decode_buckets if int(k) >= b), default=None) if n == 1 else None
        if bucket is not None:  # a smaller decode graph: its rows only (the rest of the cache is not read)
            rows = bucket
            run, length = self._bucket_runners.get(bucket) or self.decode_buckets[str(bucket)], 1
            self.last_graph = f"decode[b={bucket}]"
        elif n == 1:
            rows = self.batch
            run, length = self._decode_runner or self.decode_module, 1
            self.last_graph = "decode"
        elif self._prefill_runner is not None and (length := prefill_bucket(n, self.max_len - start)) is not None:
            rows, run = self.batch, self._prefill_runner
            self.last_graph = "prefill"
            if length > n:  # right-padded to the bucket: the causal mask keeps pads out of real rows
                more = torch.arange(1, length - n + 1, device=device)
                input_ids = torch.cat([input_ids, input_ids[:, -1:].expand(-1, length - n)], dim=1)
                position_ids = torch.cat([position_ids, position_ids[:, -1:] + more], dim=1)
                # ... and their padding 0 keeps them out of a recurrent state (restored below)
                self.padding[:, start + n : start + length] = 0
        else:
            rows, run, length = self.batch, self.prefill_module, n
            self.last_graph = "prefill"
        cache_position = torch.arange(start, start + length, device=device)
        # fresh row-major copies: a slice of a growing mask has strides that change every step, and
        # the CUDA graphs are keyed by shape, dtype and strides (a new key per step = no replay)
        logits = run(_packed(input_ids[:rows]), _packed(position_ids[:rows]), cache_position, self.padding[:rows])
        if length > n:
            self.padding[:, start + n : start + length] = 1
        self.length, self.rows = start + n, b
        return logits[:b, :n]

    def _check_step(self, b: int, n: int, start: int, attention_mask, position_ids) -> None:
        """Refuse a step the cache cannot take, before anything is changed: the message names the
        limit and what to pass."""
        if b > self.batch:
            raise InputError(
                f"batch {b} is above the {self.batch} rows tcomp captured the KV cache for; call "
                f"tcomp.optimize(..., max_batch={b}) (or more)"
            )
        if self.recurrent and 0 < start < self.length:
            raise InputError(
                f"start={start}: this decoder keeps a recurrent state (attention.linear) in place of a KV cache, "
                f"and the state holds all {self.length} tokens of the current sequence: it cannot go back to an "
                f"earlier slot. Continue at start={self.length} or start a new sequence at start=0"
            )
        if start < 0 or start > self.length:
            raise InputError(
                f"start={start}: the KV cache holds {self.length} tokens of the current sequence, so a step "
                f"starts at a slot in 0..{self.length} (0 starts a new sequence; {self.length} continues it)"
            )
        if start > 0 and b != self.rows:
            raise InputError(
                f"the current sequence has {self.rows} rows and this step {b}: the cache rows belong to that "
                "sequence; continue with all its rows, or start a new sequence at start=0"
            )
        if start + n > self.max_len:
            raise InputError(
                f"{start} cached + {n} new tokens exceed the KV cache of {self.max_len} slots; call "
                f"tcomp.optimize(..., max_len={start + n}) (or more), or generate fewer tokens"
            )
        if attention_mask is not None and tuple(attention_mask.shape) != (b, start + n):
            raise InputError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected ({b}, {start + n}): one "
                "column per token of the sequence so far"
            )
        if position_ids is not None and tuple(position_ids.shape) not in ((b, n), (1, n)):
            raise InputError(
                f"position_ids has shape {tuple(position_ids.shape)}; expected ({b}, {n}) or (1, {n})"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The model's forward on a new sequence: logits (b, n, vocab) of every position
        (``step`` continues a sequence)."""
        given = sorted(k for k, v in kwargs.items() if v is not None)
        if given:
            raise InputError(
                f"an optimized decoder's forward takes input_ids, attention_mask and position_ids, not {given}: "
                "it starts a new sequence in its own KV cache (step() continues one)"
            )
        return self.step(input_ids, attention_mask, position_ids, start=0)

    def run_named(self, named: dict[str, Any]) -> torch.Tensor:
        """Forward with the inputs given by name -- what ``tcomp run`` does with a safetensors file."""
        if "input_ids" not in named:
            raise InputError(f"a decoder runs on input_ids (and attention_mask, position_ids); got {sorted(named)}")
        with torch.no_grad():
            return self(**named)

    def save(self, folder: str) -> str:
        """Write the artifact folder of both graphs (``tcomp.artifacts_decoder``); returns the
        manifest path. ``tcomp.load(folder)`` gives back a decoder that generates the same tokens."""
        from tcomp.artifacts_decoder import write_decoder

        return str(write_decoder(self, folder))

    def _apply(self, fn, *args, **kwargs):  # .to()/.cuda(): recorded CUDA graphs read old storage
        for runner in (self._decode_runner, self._prefill_runner, *self._bucket_runners.values()):
            if runner is not None:
                runner.reset()
        out = super()._apply(fn, *args, **kwargs)
        self._bind_buckets()  # each module's buffers moved on their own: the bucket views again
        return out


PREFILL_GRAPHS_UP_TO = 1024  # longer prompts run the prefill graph directly (compute hides the launches)


def prefill_bucket(n: int, room: int) -> int | None:
    """The length a prompt of ``n`` tokens is right-padded to for a prefill CUDA graph: the power of
    two at or above it (16 at least), so a few graphs serve every prompt; ``n`` itself when that
    would pass the ``room`` left in the cache; None above :data:`PREFILL_GRAPHS_UP_TO` (no graph).

    Exact: the pads sit after the real tokens, which the causal mask hides from them; their cache
    slots are past the sequence's length, masked from every later step until a real token
    overwrites them, and their logits are dropped."""
    if n > PREFILL_GRAPHS_UP_TO:
        return None
    length = max(16, 1 << (n - 1).bit_length())
    return length if length <= room else n


def _packed(x: torch.Tensor) -> torch.Tensor:
    """``x`` with row-major strides (a copy unless it has them already)."""
    want = torch.empty(x.shape, device="meta").stride()
    return x if x.stride() == want else x.clone(memory_format=torch.contiguous_format)


def share_tensors(a: torch.nn.Module, b: torch.nn.Module) -> int:
    """Make ``b`` use ``a``'s tensor for the KV cache (always: both graphs write and read one cache)
    and for every other parameter or buffer both hold under one name with the same shape, strides,
    dtype, device and contents (weights captured twice, quantized the same way) -- unless a graph
    writes it in place: such a tensor is state, and two that are equal now need not stay equal
    (nor may a graph's writes show in the other's). Modules that are not fx graphs (a loaded
    ``Program``) share only the cache. Returns the number of tensors shared."""
    written = set()
    for m in (a, b):
        written |= written_attributes(m) if isinstance(m, fx.GraphModule) else {"*"}
    named_a = dict(a.named_parameters(remove_duplicate=False)) | dict(a.named_buffers(remove_duplicate=False))
    shared = 0
    for name, tb in [*b.named_parameters(remove_duplicate=False), *b.named_buffers(remove_duplicate=False)]:
        ta = named_a.get(name)
        if ta is None or ta is tb or _layout(ta) != _layout(tb):
            continue
        if kv_cache.is_buffer_name(name) or ("*" not in written and name not in written and torch.equal(ta, tb)):
            mod_name, _, attr = name.rpartition(".")
            owner = b.get_submodule(mod_name) if mod_name else b
            if attr in owner._parameters:
                owner._parameters[attr] = ta
            else:
                owner._buffers[attr] = ta
            shared += 1
    return shared


def _layout(t: torch.Tensor) -> tuple:
    return t.shape, t.stride(), t.dtype, t.device
