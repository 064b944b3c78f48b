"""One exception hierarchy, with messages written for the user."""


class VqclipError(Exception):
    """Base of every error the user should see as a message rather than a traceback."""


class PromptError(VqclipError):
    """A weighted prompt string cannot be parsed."""


class ManifestError(VqclipError):
    """A manifest is invalid; the message names the file, line or field and the fix."""


class ModelError(VqclipError):
    """A model is unknown, or its weights are missing, corrupt or unsafe."""


class StorageError(VqclipError):
    """The object store refused or failed an operation."""


class PermanentStorageError(StorageError):
    """A storage failure that retrying cannot fix (bad credentials, missing bucket)."""


class ObjectNotFound(StorageError):
    """No object exists under the requested key."""


class GenerationError(VqclipError):
    """Generation of an item failed (non-finite loss, out of memory)."""


class Interrupted(VqclipError):
    """SIGTERM or SIGINT stopped the run between steps; finished images are stored and the run can resume."""
