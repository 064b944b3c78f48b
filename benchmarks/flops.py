"""FLOPs of one optimisation step, counted by torch's FLOP counter, and their share of a GPU's dense bf16 peak."""

from __future__ import annotations

from torch.utils.flop_counter import FlopCounterMode

from benchmarks.engine_step import bench_items
from vqclip.config import Config
from vqclip.engine.generate import generate
from vqclip.models.loader import Models

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, by a part of the device name.
DENSE_BF16_PEAK = {"H200": 989e12, "H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 756e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def step_flops(models: Models, batch: int, size: int, cutouts: int, config: Config) -> int:
    """FLOPs of one step (forward and backward) for `batch` items, as the FLOP counter sees them."""
    counter = FlopCounterMode(display=False)
    with counter:
        generate(bench_items(models.spec, batch, size, cutouts, 1), models, config)
    return counter.get_total_flops()


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named `device_name`, None when unknown."""
    return next((peak for part, peak in DENSE_BF16_PEAK.items() if part in device_name), None)
