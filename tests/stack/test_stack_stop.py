"""`vqclip down` stops what listens on the stack's ports for the stack (a server restarted by hand), and nothing else."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from vqclip.stack.control import StackState, save_state, stop_processes
from vqclip.stack.processes import is_alive, listening_pids
from vqclip.stack.seaweedfs import free_ports

# A stand-in server: listens on a port until killed; argv[2] is where its data would be.
SERVER = "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); time.sleep(600)"


def listen(port: int, folder: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(folder)], start_new_session=True)
    deadline = time.monotonic() + 20
    while process.pid not in listening_pids([port]):
        assert time.monotonic() < deadline and process.poll() is None, "the stand-in server did not listen"
        time.sleep(0.05)
    return process


def test_down_stops_a_hand_started_server_of_the_stack_but_not_a_stranger(tmp_path: Path):
    state_dir = tmp_path / "stack"
    state_dir.mkdir()
    ours_port, stranger_port = free_ports(2)
    state = StackState(
        state_dir=str(state_dir), project_dir=str(tmp_path), prefect_home=str(state_dir / "prefect"), api_url="", ui_url="",
        server_port=ours_port, storage="s3://vqclip/outputs", bucket="vqclip", s3_endpoint_url="",
        s3_ports={"s3": stranger_port}, access_key="k", secret_key="s", socket_dir=str(tmp_path / "sockets"), running=True,
    )
    save_state(state)
    ours = listen(ours_port, state_dir / "seaweedfs" / "data")
    stranger = listen(stranger_port, tmp_path / "elsewhere")
    try:
        stopped = stop_processes(state)
        assert stopped == [f"pid {ours.pid} (listening on a stack port)"]
        ours.wait(10)
        assert is_alive(stranger.pid)
        with socket.create_connection(("127.0.0.1", stranger_port), timeout=5):
            pass
    finally:
        for process in (ours, stranger):
            process.kill()
            process.wait(10)
