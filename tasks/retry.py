"""Which failures a task retry can fix."""

from __future__ import annotations

from vqclip.errors import GenerationError, ManifestError, ModelError, PermanentStorageError, PromptError

PERMANENT = (ManifestError, PromptError, ModelError, PermanentStorageError, GenerationError)


def transient_only(task, task_run, state) -> bool:
    """Retry unless the failure is one that no retry can fix (bad input, missing weights, bad credentials)."""
    try:
        state.result()
    except PERMANENT:
        return False
    except Exception:
        return True
    return True
