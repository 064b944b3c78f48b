"""The stack's supervisor restarts a dead piece with its command, log and folder, records it, and backs off from one that keeps dying."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from vqclip.stack.control import StackState, load_state, save_state
from vqclip.stack.processes import is_alive, spawn
from vqclip.stack.supervisor import Supervisor


@pytest.fixture
def stack(tmp_path: Path):
    state_dir = tmp_path / "stack"
    (state_dir / "logs").mkdir(parents=True)
    state = StackState(
        state_dir=str(state_dir), project_dir=str(tmp_path), prefect_home=str(state_dir / "prefect"), api_url="", ui_url="",
        server_port=1, storage="s3://vqclip/outputs", bucket="vqclip", s3_endpoint_url="", s3_ports={}, access_key="k",
        secret_key="s", socket_dir=str(tmp_path / "sockets"), running=True,
    )
    piece = spawn("seaweedfs", [sys.executable, "-c", "import os, time; print(os.getcwd(), flush=True); time.sleep(600)"],
                  state_dir / "logs" / "piece.log", {"PATH": os.environ["PATH"]}, tmp_path)
    state.processes.append(piece)
    save_state(state)
    yield state
    for record in load_state(state_dir).processes:
        if is_alive(record.pid):
            os.killpg(record.pid, signal.SIGKILL)


def test_a_killed_piece_is_restarted_and_recorded(stack: StackState):
    supervisor = Supervisor(Path(stack.state_dir))
    first = stack.processes[0]
    assert supervisor.check() and load_state(stack.state_dir).processes[0].pid == first.pid  # alive: left alone

    os.killpg(first.pid, signal.SIGKILL)
    os.waitpid(first.pid, 0)
    assert supervisor.check()
    (again,) = load_state(stack.state_dir).processes
    assert again.pid != first.pid and is_alive(again.pid, again.started) and again.restarts == 1
    assert again.command == first.command and again.log == first.log and again.cwd == first.cwd

    # It died quickly: the next restart waits (2 s), so a crashing piece does not spin.
    os.killpg(again.pid, signal.SIGKILL)
    os.waitpid(again.pid, 0)
    supervisor.check()
    assert load_state(stack.state_dir).processes[0].pid == again.pid
    supervisor.not_before.clear()
    supervisor.check()
    assert load_state(stack.state_dir).processes[0].restarts == 2


def test_nothing_is_supervised_once_the_stack_is_stopped(stack: StackState):
    stack.running = False
    save_state(stack)
    assert not Supervisor(Path(stack.state_dir)).check()
