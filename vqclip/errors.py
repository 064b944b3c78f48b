"""One exception hierarchy, with messages written for the user."""


class VqclipError(Exception):
    """Base of every error the user should see as a message rather than a traceback."""

    # What vqclip.retry reads: a retry fixes only a fault marked transient; bad input stays bad.
    transient: bool = False


class PromptError(VqclipError):
    """A weighted prompt string cannot be parsed."""


class ManifestError(VqclipError):
    """A manifest is invalid; the message names the file, line or field and the fix."""


class ModelError(VqclipError):
    """A model is unknown, or its weights are missing, corrupt or unsafe."""


class StorageError(VqclipError):
    """The object store refused or failed an operation."""


class TransientStorageError(StorageError):
    """A storage failure that a later try may not meet (server down or overloaded, I/O fault)."""

    transient = True


class PermanentStorageError(StorageError):
    """A storage failure that retrying cannot fix (bad credentials, missing bucket)."""


class ObjectNotFound(StorageError):
    """No object exists under the requested key."""


class GenerationError(VqclipError):
    """Generation of an item failed (non-finite loss, out of memory)."""


class Interrupted(VqclipError):
    """SIGTERM or SIGINT stopped the run between steps; finished images are stored and the run can resume.

    Never retried in the stopping process: resuming the run is what picks the work up again.
    """
