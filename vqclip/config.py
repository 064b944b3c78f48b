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


class Config(BaseSettings):
    """Every knob a deployment may turn, each read from `VQCLIP_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="VQCLIP_", extra="ignore")

    cache_dir: Path = Field(default_factory=_default_cache_dir, description="Where model weights are cached.")
    offline: bool = Field(False, description="Never touch the network; missing weights fail at once.")
    connect_timeout: float = Field(4.0, gt=0, description="Seconds to reach a weight host before giving up.")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")
    bf16: bool | None = Field(
        None,
        description="bf16 autocast for CLIP and the VQGAN decoder. Unset: on for CUDA and for CPUs with native bf16 "
        "(AVX512-BF16 or AMX: a full-size 256 px step 6.2 s against 8.0 s in fp32, peak RSS 3.19 against 3.78 GiB); "
        "off elsewhere, where bf16 would be emulated and slower.",
    )
    micro_batch: int = Field(
        0, ge=0, description="Items per forward/backward pass within a batch; 0: 1 on CPU, the whole batch on CUDA."
    )
    tf32: bool = Field(True, description="TF32 tensor cores for fp32 matrix products and convolutions on CUDA.")
    channels_last: bool = Field(
        False, description="Channels-last memory format for the VQGAN decoder (measured slower on an H200: 0.175 s "
        "against 0.156 s per step at batch 16 in bf16)."
    )
    packed_attention: bool = Field(
        True,
        description="CLIP's image attention with each projection as one matrix product over all cutouts' tokens; off: "
        "torch's MultiheadAttention, which with frozen weights copies the input projection once per token position "
        "(CLIP's forward and backward at 32 cutouts take about half the time packed on a CPU).",
    )
    cudnn_benchmark: bool = Field(
        False,
        description="Let cuDNN time its kernels for every new input shape (each batch and image size). Measured on "
        "an H100: no faster per step in bf16, and the searches for fp32 shapes took minutes.",
    )
    checkpoint_side: int = Field(
        0,
        ge=0,
        description="Recompute the decoder's activations in the backward pass for images whose larger side is at "
        "least this many pixels (less memory, about a third more decoder work); 0: never.",
    )
    compile: bool = Field(
        False, description="torch.compile the decoder and CLIP image encoders; falls back to eager if compiling fails."
    )
    auto_batch: bool = Field(
        True, description="On CUDA, split a shard into batches that fit the GPU's free memory (measured by a probe step)."
    )
    memory_fraction: float = Field(0.85, gt=0, le=1, description="Share of free GPU memory auto_batch may plan to use.")
    upload_queue: int = Field(
        32, ge=1, description="Finished images waiting for upload before generation waits for storage."
    )
    storage: str = Field("./vqclip-output", description="Output store: a folder, file://..., or s3://bucket/prefix.")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (SeaweedFS, MinIO...).")
    s3_path_style: bool = Field(True, description="Path-style addressing (needed by most self-hosted S3 stores).")
    browse_url: str | None = Field(
        None,
        description="Where `vqclip serve` answers for the store (e.g. http://127.0.0.1:8470): the Prefect UI's artifacts "
        "then link every image, sidecar, contact sheet and gallery there. Thumbnails show without it.",
    )
    filter: str | None = Field(
        None,
        description="The zero-shot filter for manifests without a `filter:` section: inline JSON ({\"labels\": [...], "
        "\"reject\": [...], \"threshold\": 0.5}) or the path of a YAML or JSON file holding it.",
    )
    shard_attempts: int = Field(3, gt=0, description="Dispatches of a remote shard before its items count as failed.")
    shard_timeout: float = Field(6 * 3600, gt=0, description="Seconds a batch waits for its remote shards.")
    batch_attempts: int = Field(
        3, gt=0, description="Runs of one batch, the first and automatic resumes after its process was lost, before "
        "the reconciler marks it Failed (scale-out only)."
    )
    zombie_after_s: float = Field(
        75.0, gt=0, description="Seconds after a flow run's last heartbeat (one every 30 s) before the zombie-run "
        "automation marks it Crashed (read where it is installed: `vqclip up`, docker/init.sh); at least 40."
    )
    max_prompts: int = Field(1000, gt=0, description="Prompts allowed in one manifest.")
    max_images_per_prompt: int = Field(64, gt=0, description="Images allowed per prompt.")
    max_side: int = Field(1024, gt=0, description="Largest width or height in pixels.")
    max_steps: int = Field(5000, gt=0, description="Largest optimisation step count.")
    max_manifest_bytes: int = Field(5_000_000, gt=0, description="Largest manifest file size.")
    max_megapixel_steps: int = Field(
        1_000_000,
        gt=0,
        description="A manifest's total work: width x height x steps summed over its images, in millions (about "
        "3.8 million image-steps at 512x512, e.g. 2,000 images of 1,000 steps and a margin).",
    )

    @property
    def vqgan_cache(self) -> Path:
        return self.cache_dir / "vqgan"

    @property
    def clip_cache(self) -> Path:
        return self.cache_dir / "clip"


@lru_cache(maxsize=1)
def get_config() -> Config:
    """The process-wide configuration (read once from the environment)."""
    return Config()
