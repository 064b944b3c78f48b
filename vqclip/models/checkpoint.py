"""Safe and quick checkpoint loading: `torch.load(weights_only=True)` with a minimal allow-list,
memory-mapped files, and model construction that skips random initialisation."""

from __future__ import annotations

import contextlib
import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.utils.serialization

from vqclip.errors import ModelError


class LightningClassReference:
    """Stands in for a Lightning class that old checkpoints name but never instantiate.

    The 2020 taming checkpoints key their `callbacks` state by the `ModelCheckpoint` class object
    itself; unpickling needs only a name for it, so this inert class answers instead of importing
    pytorch-lightning.
    """


ALLOWED_CLASS_REFERENCES = ("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",)

# The `torch.nn.init` functions that layers' constructors call to fill fresh weights.
_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
)  # fmt: skip


@contextlib.contextmanager
def skip_weight_init() -> Iterator[None]:
    """Build modules without filling their weights with random values (a checkpoint overwrites them).

    Random initialisation of the default preset's CLIP models costs seconds on a CPU for values that
    are thrown away. Inside this context the `torch.nn.init` fill functions do nothing, so new
    weights hold whatever memory they were given: load a strict state dict into them before use.
    Process-wide; the model loader builds one model at a time.
    """
    # MultiheadAttention calls the copies that torch.nn.modules.activation imported by name.
    places = (torch.nn.init, torch.nn.modules.activation)
    saved = [(place, name, getattr(place, name)) for place in places for name in _INIT_FUNCTIONS if hasattr(place, name)]
    for place, name, _ in saved:
        setattr(place, name, _leave_as_is)
    try:
        yield
    finally:
        for place, name, function in saved:
            setattr(place, name, function)


def _leave_as_is(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return tensor


@contextlib.contextmanager
def mapped_loads(path: Path) -> Iterator[None]:
    """Let `torch.load` map `path` into memory instead of reading it (for loads inside open_clip).

    Tensors are then copied once, from the page cache into the model, instead of twice.
    """
    config = torch.utils.serialization.config.load
    saved, config.mmap = config.mmap, mappable(path)
    try:
        yield
    finally:
        config.mmap = saved


def load_state_dict(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Load a checkpoint's tensors without running any code it might carry.

    Lightning-style files hold the weights under `state_dict`; plain state dicts are taken as they
    are. With `prefix`, only keys under it are kept, with the prefix removed.
    """
    allowed = [(LightningClassReference, name) for name in ALLOWED_CLASS_REFERENCES]
    try:
        with torch.serialization.safe_globals(allowed):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mappable(path))
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it references {found.group(1)}, which" if found else "it holds objects that"
        raise ModelError(
            f"refused to load {path}: {what} could run code when unpickled. Only plain weight files "
            f"are loaded; if you trust this file, re-save its state_dict with torch.save."
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ModelError(f"{path} is not a readable PyTorch checkpoint ({exc}); delete it and fetch it again") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds no state dict; expected a checkpoint with a 'state_dict' entry")
    if prefix:
        state = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    return state


def mappable(path: Path) -> bool:
    """Whether `torch.load` can map this file: PyTorch's zip format (1.6 and later), not the legacy one."""
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"
    return False
