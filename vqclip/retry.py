"""The one retry policy: only transient faults are tried again, by the engine and by Prefect alike.

A fault is transient when its error says so (`VqclipError.transient`) or when it comes from outside
vqclip (a library's network error, a killed process): every vqclip error that is not marked
transient is bad input, a missing file or refused credentials, and fails the same way every time.
A graceful stop (`Interrupted`) is never retried: resuming the run picks the work up again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from vqclip import shutdown
from vqclip.errors import Interrupted, VqclipError

T = TypeVar("T")

# Seconds between tries of one image's commit, after boto3's own retries: outlasts a store's restart.
COMMIT_DELAYS = (1, 2, 4, 8, 16)
# Seconds between Prefect's retries of a task; each retry redoes only the work not yet stored.
TASK_DELAYS = (2, 5, 10)


def is_transient(error: BaseException) -> bool:
    """Whether trying again may succeed where `error` failed."""
    if isinstance(error, VqclipError):
        return error.transient
    return isinstance(error, Exception)


def is_permanent(error: BaseException) -> bool:
    """Whether `error` fails the same way on every try: a vqclip error not marked transient, other than a stop."""
    return isinstance(error, VqclipError) and not error.transient and not isinstance(error, Interrupted)


def retry_transient(call: Callable[[], T], what: str, log: logging.Logger | logging.LoggerAdapter, delays: tuple[float, ...] = COMMIT_DELAYS) -> T:
    """Return `call()`, trying again after each of `delays` while it fails transiently and no stop is requested."""
    for delay in delays:
        try:
            return call()
        except Exception as error:
            if not is_transient(error) or shutdown.requested():
                raise
            log.warning("%s failed (%s); retrying in %g s", what, error, delay)
            # A stopping process must exit within seconds: the wait ends early and a resumed run redoes the work.
            shutdown.wait(delay)
    return call()
