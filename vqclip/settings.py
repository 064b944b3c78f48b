"""Runtime configuration: one pydantic-settings class read from `VQCLIP_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache_dir() -> Path:
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vqclip"


class Settings(BaseSettings):
    """Every knob a deployment may turn, each read from `VQCLIP_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="VQCLIP_", extra="ignore")

    cache_dir: Path = Field(default_factory=_default_cache_dir, description="Where model weights are cached.")
    offline: bool = Field(False, description="Never touch the network; missing weights fail at once.")
    connect_timeout: float = Field(4.0, gt=0, description="Seconds to reach a weight host before giving up.")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")
    bf16: bool = Field(
        False,
        description="bf16 autocast for CLIP and the VQGAN decoder (CUDA, and CPUs with native bf16): faster, "
        "but an item's pixels then depend on which items share its batch.",
    )
    micro_batch: int = Field(
        0, ge=0, description="Items per forward/backward pass within a batch; 0: 1 on CPU, the whole batch on CUDA."
    )
    storage: str = Field("./vqclip-output", description="Output store: a folder, file://..., or s3://bucket/prefix.")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (SeaweedFS, MinIO...).")
    s3_path_style: bool = Field(True, description="Path-style addressing (needed by most self-hosted S3 stores).")
    shard_attempts: int = Field(3, gt=0, description="Dispatches of a remote shard before its items count as failed.")
    shard_timeout: float = Field(6 * 3600, gt=0, description="Seconds a batch waits for its remote shards.")
    max_prompts: int = Field(1000, gt=0, description="Prompts allowed in one manifest.")
    max_images_per_prompt: int = Field(64, gt=0, description="Images allowed per prompt.")
    max_side: int = Field(1024, gt=0, description="Largest width or height in pixels.")
    max_steps: int = Field(5000, gt=0, description="Largest optimisation step count.")
    max_manifest_bytes: int = Field(5_000_000, gt=0, description="Largest manifest file size.")

    @property
    def vqgan_cache(self) -> Path:
        return self.cache_dir / "vqgan"

    @property
    def clip_cache(self) -> Path:
        return self.cache_dir / "clip"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
