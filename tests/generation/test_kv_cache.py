"""tcomp.kv_cache: the masks tcomp builds over the cache, and the cache objects models are given."""

from __future__ import annotations

import pytest
import torch

from tcomp import kv_cache


def _brute(p: int, j: int, real: bool, window: int | None) -> bool:
    seen = j <= p and (window is None or j > p - window)
    return (seen and real) or j == p


@pytest.mark.parametrize("window", [None, 3])
def test_masks_read_earlier_real_slots_in_the_window_and_always_the_own_slot(window):
    gen = torch.Generator().manual_seed(0)
    padding = (torch.rand(2, 10, generator=gen) > 0.3).long()
    positions = torch.tensor([4, 5, 6, 9])
    masks = kv_cache.attention_masks(positions, padding, windows={"w": window}, dtype=None)
    additive = kv_cache.attention_masks(positions, padding, windows={"w": window}, dtype=torch.float16)
    assert masks["w"].dtype == torch.bool and masks["w"].shape == (2, 1, 4, 10)
    for b in range(2):
        for i, p in enumerate(positions.tolist()):
            for j in range(10):
                want = _brute(p, j, bool(padding[b, j]), window)
                assert bool(masks["w"][b, 0, i, j]) == want, (b, p, j)
                assert float(additive["w"][b, 0, i, j]) == (0.0 if want else torch.finfo(torch.float16).min)


def test_cache_objects_are_hugging_face_caches_of_one_class_each():
    pytest.importorskip("transformers")
    from transformers.cache_utils import Cache

    a, b = kv_cache.make_probe(4), kv_cache.make_probe(8)
    assert isinstance(a, Cache) and type(a) is type(b)  # one class, not one per call
    owner = torch.nn.Module()
    shapes = {0: kv_cache.LayerShape(2, 4, 4, torch.float32)}
    s1, s2 = (kv_cache.attach(owner, shapes, 1, 6, torch.device("cpu")) for _ in range(2))
    assert isinstance(s1, Cache) and type(s1) is type(s2) and owner.tcomp_kv_k_0.shape == (1, 2, 6, 4)
    assert kv_cache.is_buffer_name("tcomp_kv_v_12") and not kv_cache.is_buffer_name("tcomp_kv_v_12.x")
