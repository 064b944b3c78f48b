"""Safe and quick checkpoint loading: `torch.load(weights_only=True)` with a minimal allow-list,
memory-mapped files, and models built with their parameters on the meta device, then assigned."""

from __future__ import annotations

import contextlib
import contextvars
import pickle
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
import torch.utils.serialization
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook
from torch.nn.parameter import UninitializedParameter

from vqclip.errors import ModelError


class LightningClassReference:
    """Stands in for a Lightning class that old checkpoints name but never instantiate.

    The 2020 taming checkpoints key their `callbacks` state by the `ModelCheckpoint` class object
    itself; unpickling needs only a name for it, so this inert class answers instead of importing
    pytorch-lightning.
    """


ALLOWED_CLASS_REFERENCES = ("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",)

_META_PARAMETERS: contextvars.ContextVar[bool] = contextvars.ContextVar("vqclip_meta_parameters", default=False)


def _parameter_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> nn.Parameter | None:
    if param is None or not _META_PARAMETERS.get() or param.is_meta or isinstance(param, UninitializedParameter):
        return None
    return nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)


# Registered once for the process (adding and removing global hooks races with other threads' modules); it
# acts only inside `meta_parameters`, and a context variable is private to its thread.
register_module_parameter_registration_hook(_parameter_on_meta)


@contextlib.contextmanager
def meta_parameters() -> Iterator[None]:
    """Build modules whose parameters live on the meta device: no memory, no random initialisation.

    Random initialisation of the default preset's CLIP models costs seconds on a CPU for values that a
    checkpoint overwrites. Buffers are still made for real: some (attention masks, rotary tables) are in
    no checkpoint. Fill the parameters with `load_assigned`. Only modules built by this thread change.
    """
    token = _META_PARAMETERS.set(True)
    try:
        yield
    finally:
        _META_PARAMETERS.reset(token)


def load_assigned(model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True) -> object:
    """Load `state` into `model` by taking its tensors as they are (`assign=True`), in the model's dtypes.

    The way to fill a model built with `meta_parameters`; returns what `load_state_dict` returns.
    """
    dtypes = {key: value.dtype for key, value in model.state_dict().items()}
    state = {key: value.to(dtypes[key]) if key in dtypes else value for key, value in state.items()}
    return nn.Module.load_state_dict(model, state, strict=strict, assign=True)


@contextlib.contextmanager
def mapped_loads(path: Path) -> Iterator[None]:
    """Let `torch.load` map `path` into memory instead of reading it (for loads inside open_clip).

    Tensors then come from the page cache (a model that assigns them keeps them there) instead of a copy.
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
