"""Processes of the local stack: start them in sessions of their own, tell them alive, wait for them
to be ready, stop whole trees of them, find their listening ports, and free loopback ports.

POSIX-only (Linux: /proc is read for process trees and sockets).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path

from pydantic import BaseModel

from vqclip.errors import VqclipError

STOP_TIMEOUT_S = 15.0
POLL_S = 0.5


class StackError(VqclipError):
    """The local stack could not be started or stopped; the message names the log to read."""


class ProcessRecord(BaseModel):
    """One process the stack started: its pid is also its process group id (own session)."""

    name: str
    pid: int
    started: int  # start time in clock ticks since boot (/proc/PID/stat), to tell a reused pid apart
    log: str
    command: list[str]
    cwd: str = ""
    restarts: int = 0
    started_at: float = 0.0  # time.time() of the (re)start


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def _reap(pid: int) -> None:
    """Collect `pid`'s exit status if it is a child of this process (so it does not linger as a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def is_alive(pid: int, started: int | None = None) -> bool:
    """Whether `pid` runs (not a zombie) and, given `started`, is still the process that started then."""
    _reap(pid)
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def descendants(pids: Iterable[int]) -> list[int]:
    """Every live descendant of `pids`, from a scan of /proc (flow-run processes sit in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def _signal_group(pid: int, sig: int) -> None:
    """Send `sig` to the process group led by `pid`, or to `pid` alone when it leads none."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    except PermissionError:
        pass


def kill_tree(pids: Iterable[int], sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> None:
    """Signal each pid's process group and every descendant's; SIGKILL whatever outlives `timeout`."""
    pids = [pid for pid in pids if is_alive(pid)]
    targets = pids + [pid for pid in descendants(pids) if pid not in pids]
    own = os.getpgid(0)
    for pid in targets:
        group = _safe_getpgid(pid)
        if group is None:
            continue
        # A descendant left in our own process group is signalled alone, never the group we run in.
        if group == own:
            _kill_one(pid, sig)
        else:
            _signal_group(group, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(is_alive(pid) for pid in targets):
        time.sleep(0.1)
    for pid in targets:
        if is_alive(pid):
            group = _safe_getpgid(pid)
            if group is not None and group != own:
                _signal_group(group, signal.SIGKILL)
            _kill_one(pid, signal.SIGKILL)


def _safe_getpgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _kill_one(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def log_tail(path: str | Path, lines: int = 40) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def spawn(name: str, command: list[str], log: Path, env: dict[str, str], cwd: Path) -> ProcessRecord:
    """Start `command` in a session of its own, output appended to `log`, its files and sockets its owner's alone."""
    with open(log, "ab") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, umask=0o077)
    return ProcessRecord(name=name, pid=process.pid, started=start_ticks(process.pid) or 0, log=str(log),
                         command=command, cwd=str(cwd), started_at=time.time())


def listening_sockets() -> dict[str, int]:
    """The port of every listening TCP socket on this machine, by socket inode (from /proc/net/tcp and tcp6)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A":  # TCP_LISTEN
                found[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    return found


def socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets process `pid` holds open (empty when it is gone or not ours to read)."""
    try:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return set()
    return {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}


def listening_pids(ports: Iterable[int]) -> set[int]:
    """Processes with a TCP socket listening on any of `ports`."""
    wanted = set(ports)
    inodes = {inode for inode, port in listening_sockets().items() if port in wanted}
    return {int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit() and socket_inodes(int(entry.name)) & inodes}


def wait_for(what: str, ready: Callable[[], bool], timeout: float, record: ProcessRecord | None = None) -> None:
    """Poll `ready` until it is true; raise StackError naming `what` and the log tail after `timeout`,
    or at once when `record`'s process exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if record is not None and not is_alive(record.pid):
            raise StackError(f"{what}: {record.name} exited while starting; log {record.log}, tail:\n{log_tail(record.log)}")
        try:
            if ready():
                return
        except Exception as exc:  # any failure here only means: not ready yet
            last = f" (last: {type(exc).__name__}: {exc})"
        if time.monotonic() > deadline:
            where = f"; log {record.log}, tail:\n{log_tail(record.log)}" if record else ""
            raise StackError(f"{what}: not ready after {timeout:.0f} s{last}{where}")
        time.sleep(POLL_S)


def can_bind(port: int) -> bool:
    """Whether a loopback TCP port is free now."""
    with socket.socket() as probe:
        # As servers bind: a port whose last connections linger in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback TCP ports that are free now."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports
