"""A session fixture for the local scale-out stack (vqclip/stack/control.py): a real Prefect server, SeaweedFS and workers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vqclip.stack.control import StackState, log_tail, start_stack, stop_stack

GPU_WORKERS = 2


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackState]:
    """The stack with one cpu worker and GPU_WORKERS gpu workers, stopped by pid at the end of the session."""
    state_dir = tmp_path_factory.mktemp("stack")
    try:
        state = start_stack(state_dir, gpu_workers=GPU_WORKERS)
    except BaseException:
        stop_stack(state_dir)
        raise
    try:
        yield state
    finally:
        stop_stack(state_dir)


def stack_logs(state: StackState, lines: int = 25) -> str:
    """The tail of every stack process's log, for failure messages."""
    return "\n".join(f"--- {record.name} ({record.log})\n{log_tail(record.log, lines)}" for record in state.processes)
