"""Safe checkpoint loading: `torch.load(weights_only=True)` with a minimal allow-list."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from vqclip.errors import ModelError


class LightningClassReference:
    """Stands in for a Lightning class that old checkpoints name but never instantiate.

    The 2020 taming checkpoints key their `callbacks` state by the `ModelCheckpoint` class object
    itself; unpickling needs only a name for it, so this inert class answers instead of importing
    pytorch-lightning.
    """


ALLOWED_CLASS_REFERENCES = ("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",)


def load_state_dict(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Load a checkpoint's tensors without running any code it might carry.

    Lightning-style files hold the weights under `state_dict`; plain state dicts are taken as they
    are. With `prefix`, only keys under it are kept, with the prefix removed.
    """
    allowed = [(LightningClassReference, name) for name in ALLOWED_CLASS_REFERENCES]
    try:
        with torch.serialization.safe_globals(allowed):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
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
