"""Batch sizes: the whole shard on a CPU; on CUDA what fits in free memory, never below one item."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.engine import item
from vqclip.config import Config
from vqclip.engine.batching import batches, engine_batch_size, fit_batch, measure_batch_memory

GIB = 2**30


def test_fit_batch_divides_what_is_left_after_the_fixed_cost():
    assert fit_batch(fixed=2 * GIB, per_item=GIB // 2, free=10 * GIB) == 16
    assert fit_batch(fixed=2 * GIB, per_item=3 * GIB, free=10 * GIB) == 2
    assert fit_batch(fixed=12 * GIB, per_item=GIB, free=10 * GIB) == 1, "one item is always tried"


def test_on_a_cpu_a_shard_is_one_batch(tiny_models):
    items = [item("snow", seed) for seed in range(5)]
    assert engine_batch_size(tiny_models, items, Config()) == 5
    assert [len(b) for b in batches(items, 2)] == [2, 2, 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_probe_memory_grows_with_items_and_the_batch_fits():
    from vqclip.models.loader import load_models

    models = load_models("tiny", device="cuda", include_scorer=False)
    items = [item("snow", seed) for seed in range(64)]
    fixed, per_item = measure_batch_memory(models, items[0], Config())
    assert per_item > 0 and fixed >= 0
    size = engine_batch_size(models, items, Config(memory_fraction=0.5))
    assert 1 <= size <= 64
