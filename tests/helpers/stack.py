"""Failure messages for tests of the local stack."""

from __future__ import annotations

from vqclip.stack.control import StackState
from vqclip.stack.processes import log_tail


def stack_logs(state: StackState, lines: int = 25) -> str:
    """The tail of every stack process's log, for failure messages."""
    return "\n".join(f"--- {record.name} ({record.log})\n{log_tail(record.log, lines)}" for record in state.processes)
