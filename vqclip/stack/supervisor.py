"""The local stack's supervisor: restarts any piece of a `vqclip up` stack that dies, and records it.

Run by `vqclip up` as `python -m vqclip.stack.supervisor STATE_DIR`, in a session of its own. Every
CHECK_S it reads `<state>/stack.json`; a recorded process that is gone is started again with the
same command, working folder, log and environment, in a new session, and the state file gets its
new pid and restart count (what `vqclip status` shows and `vqclip down` stops). A piece that dies
again within STABLE_S of a restart waits 2, 4, ... up to MAX_BACKOFF_S before its next restart.
It exits on SIGTERM or SIGINT, or when the state says the stack was stopped.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path

from vqclip.stack.control import SUPERVISOR, ProcessRecord, StackState, is_alive, load_state, process_env, save_state, spawn

logger = logging.getLogger("vqclip.stack.supervisor")

CHECK_S = 2.0
STABLE_S = 60.0
MAX_BACKOFF_S = 60.0


def _clear_sockets(state: StackState) -> None:
    """Remove the unix sockets a killed weed left behind, so its restart can bind them again."""
    for sock in [*map(Path, state.stray_sockets), *Path(state.socket_dir).glob("*.sock")]:
        sock.unlink(missing_ok=True)


def restart(state: StackState, record: ProcessRecord) -> ProcessRecord:
    """Start `record`'s command again as it was started; return the new record."""
    if record.name == "seaweedfs":
        Path(state.socket_dir).mkdir(parents=True, exist_ok=True)
        _clear_sockets(state)
    new = spawn(record.name, record.command, Path(record.log), process_env(state, record.name), Path(record.cwd or state.project_dir))
    new.restarts = record.restarts + 1
    return new


class Supervisor:
    """Watches one stack's processes and restarts the dead ones, backing off from a piece that keeps dying."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.stopping = threading.Event()
        self.quick_deaths: dict[str, int] = {}
        self.not_before: dict[str, float] = {}

    def check(self) -> bool:
        """Restart what died since the last check; False once the stack is stopped (nothing to supervise)."""
        state = load_state(self.state_dir)
        if state is None or not state.running:
            return False
        changed = False
        for position, record in enumerate(state.processes):
            if record.name == SUPERVISOR or is_alive(record.pid, record.started):
                continue
            now = time.time()
            if now < self.not_before.get(record.name, 0.0):
                continue
            lived = now - record.started_at if record.started_at else STABLE_S
            quick = self.quick_deaths.get(record.name, 0) + 1 if lived < STABLE_S else 0
            self.quick_deaths[record.name] = quick
            self.not_before[record.name] = now + (min(MAX_BACKOFF_S, 2.0**quick) if quick else 0.0)
            state.processes[position] = restart(state, record)
            changed = True
            logger.warning("%s (pid %d) was gone after %.0f s; restarted as pid %d (restart %d)",
                           record.name, record.pid, lived, state.processes[position].pid, state.processes[position].restarts)
        if changed and not self.stopping.is_set():
            save_state(state)
        return True

    def run(self) -> None:
        """Check every CHECK_S until stopped."""
        while not self.stopping.is_set() and self.check():
            self.stopping.wait(CHECK_S)


def main() -> None:
    """Entry point: supervise the stack whose state folder is the only argument."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    supervisor = Supervisor(Path(sys.argv[1]))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: supervisor.stopping.set())
    logger.info("supervising the stack in %s", supervisor.state_dir)
    supervisor.run()


if __name__ == "__main__":
    main()
