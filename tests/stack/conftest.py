"""The local scale-out stack (vqclip/stack/control.py) for this folder's tests: a real Prefect server, SeaweedFS and workers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.stack import ZOMBIE_AFTER_S
from vqclip.config import get_config
from vqclip.stack.control import StackState, start_stack, stop_stack

GPU_WORKERS = 2


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackState]:
    """The stack with one cpu worker, GPU_WORKERS gpu workers and a ZOMBIE_AFTER_S window, stopped by pid at the end of the session."""
    state_dir = tmp_path_factory.mktemp("stack")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VQCLIP_ZOMBIE_AFTER_S", str(ZOMBIE_AFTER_S))
        get_config.cache_clear()
        try:
            state = start_stack(state_dir, gpu_workers=GPU_WORKERS)
        except BaseException:
            stop_stack(state_dir)
            raise
        try:
            yield state
        finally:
            stop_stack(state_dir)
            get_config.cache_clear()
