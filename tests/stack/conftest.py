"""The local scale-out stack (vqclip/stack/control.py) for this folder's tests: a real Prefect server, SeaweedFS and workers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vqclip.stack.control import StackState, start_stack, stop_stack

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
