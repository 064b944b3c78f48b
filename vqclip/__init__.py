"""vqclip: batched VQGAN+CLIP generation, CLIP scoring and ranking (the engine; no Prefect here)."""

__version__ = "0.3.0"  # in every item id: bump it whenever the same settings give other pixels
