"""The process-wide stop flag: SIGTERM or SIGINT asks long work to stop at its next step.

Generation checks the flag between optimisation steps and between phases, so a signal never lands
in the middle of a commit or of an API call; finished images are still stored on the way out. A
second signal ends the process at once, for a user who will not wait.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from vqclip.errors import Interrupted

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_stop = threading.Event()
_received: list[int] = []


def request(signum: int) -> None:
    """Ask every running step loop to stop, as signal `signum` would."""
    _received.append(signum)
    _stop.set()


def requested() -> bool:
    """Whether a stop was asked for."""
    return _stop.is_set()


def exit_status() -> int:
    """The shell's status for a process ended by the first signal received (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + first_signal()


def first_signal() -> int:
    """The signal that first asked to stop."""
    return _received[0]


def wait(seconds: float) -> None:
    """Sleep up to `seconds`, waking early when a stop is requested."""
    _stop.wait(seconds)


def check() -> None:
    """Raise Interrupted if a stop was asked for."""
    if _stop.is_set():
        raise Interrupted(f"stopped by {signal.Signals(_received[0]).name}")


def _handle(signum: int, frame) -> None:
    if _stop.is_set():
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    request(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT set the stop flag instead of ending the process.

    The handlers they replace (Prefect's SIGTERM bridge in a flow run, say) come back on leaving.
    Off the main thread, where Python cannot install handlers, the block changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _handle) for signum in _SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
