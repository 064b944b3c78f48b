"""vqclip: batched VQGAN+CLIP generation, CLIP scoring and ranking (the engine; no Prefect here)."""

__version__ = "0.1.0"
