"""How many items one engine batch holds: the whole shard on a CPU, what fits in free memory on CUDA.

On CUDA, probe steps (one item, then two; each measured on its second run) tell what a batch
costs: a fixed part and a part per item. The largest batch whose cost fits in the free memory
(times `memory_fraction`) is used; the pipeline still halves a batch that runs out of memory.
"""

from __future__ import annotations

import logging

import torch

from vqclip.config import Config
from vqclip.engine.generate import generate
from vqclip.items import WorkItem
from vqclip.models.loader import Models

log = logging.getLogger(__name__)

_MEASURED: dict[str, tuple[int, int]] = {}


def fit_batch(fixed: int, per_item: int, free: int) -> int:
    """Items that fit in `free` bytes when a batch of n costs `fixed + n * per_item` bytes (at least 1)."""
    return max(1, (free - fixed) // max(per_item, 1))


def measure_batch_memory(models: Models, item: WorkItem, runtime: Config) -> tuple[int, int]:
    """(fixed, per-item) peak CUDA bytes of an optimisation step for items shaped like `item`."""
    device = models.device
    probe = item.settings.model_copy(update={"steps": 1, "save_every": 0})
    peaks = []
    for count in (1, 2):
        items = [
            item.model_copy(update={"seed": i, "settings": probe, "init_image": None, "image_prompts": ()})
            for i in range(count)
        ]
        generate(items, models, runtime)  # first at this shape: a cuDNN kernel search, if on, allocates scratch
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        generate(items, models, runtime)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    per_item = max(peaks[1] - peaks[0], 1)
    return max(peaks[0] - per_item, 0), per_item


def _free_memory(device: torch.device) -> int:
    """Bytes the allocator can still hand out: free on the card plus what it has cached but not used."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def engine_batch_size(models: Models, items: list[WorkItem], runtime: Config) -> int:
    """Items per engine batch for `items` (one shape): all of them, unless CUDA memory allows fewer."""
    if models.device.type != "cuda" or not runtime.auto_batch or runtime.micro_batch or len(items) == 1:
        return len(items)
    item = items[0]
    shape = item.settings.model_dump_json(include={"width", "height", "cutouts"})
    switches = runtime.model_dump_json(include={"bf16", "tf32", "channels_last", "checkpoint_side", "compile"})
    key = f"{models.spec.model_dump_json()}|{models.device}|{shape}|{switches}"
    if key not in _MEASURED:
        _MEASURED[key] = measure_batch_memory(models, item, runtime)
    fixed, per_item = _MEASURED[key]
    free = _free_memory(models.device)
    size = min(len(items), fit_batch(fixed, per_item, int(free * runtime.memory_fraction)))
    log.info(
        "batch of %d: %.2f GiB per item, %.2f GiB fixed, %.1f GiB free on %s",
        size, per_item / 2**30, fixed / 2**30, free / 2**30, models.device,
    )
    return size


def batches(items: list[WorkItem], size: int) -> list[list[WorkItem]]:
    """`items` in consecutive batches of at most `size`."""
    return [items[start : start + size] for start in range(0, len(items), size)]

