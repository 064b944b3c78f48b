"""What tests of the local stack share: its zombie window and failure messages."""

from __future__ import annotations

from vqclip.stack.control import StackState
from vqclip.stack.processes import log_tail

# The tests' stack marks a flow run Crashed this many seconds after its last heartbeat (default 75):
# the shortest window VQCLIP_ZOMBIE_AFTER_S allows, plus a margin for a late heartbeat on a busy machine.
ZOMBIE_AFTER_S = 45


def stack_logs(state: StackState, lines: int = 25) -> str:
    """The tail of every stack process's log, for failure messages."""
    return "\n".join(f"--- {record.name} ({record.log})\n{log_tail(record.log, lines)}" for record in state.processes)
