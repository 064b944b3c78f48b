"""A local scale-out stack on one machine: Prefect server, SeaweedFS, work pools, deployments, workers.

`start_stack` starts, each in a process session of its own and bound to 127.0.0.1 on free ports:
a Prefect server (SQLite in the state folder), a SeaweedFS S3 server with one enforced identity and
a bucket, a read-only `vqclip serve` view of the bucket (the workers' artifacts link their images
there), a `cpu` worker and N `gpu` workers (process type; CPU-only unless the machine has a GPU). The server requires an auth string (Prefect's PREFECT_SERVER_API_AUTH_STRING) that the
workers and `env.sh` pass. It creates the work pools, applies deployments/prefect.yaml and the
automations (zombie flow runs marked Crashed; crashed batch runs reconciled), marks the runs a
previous stack left in flight Crashed, records pids, ports and URLs in `<state>/stack.json` (logs
beside it), and starts a supervisor (vqclip/stack/supervisor.py) that restarts any piece that dies.
`stop_stack` stops them again by pid, flow-run processes started by the workers and any process
still listening on the stack's ports included.

Process control here is POSIX-only (Linux: /proc is read to find a worker's flow-run processes).
Prefect is imported lazily: the engine modules stay free of it.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

from pydantic import BaseModel

from vqclip.config import get_config
from vqclip.stack.processes import (
    ProcessRecord,
    StackError,
    can_bind,
    free_ports,
    is_alive,
    kill_tree,
    listening_pids,
    log_tail,
    spawn,
    start_ticks,
    wait_for,
)
from vqclip.stack.seaweedfs import PORT_NAMES, SeaweedServer

if TYPE_CHECKING:
    from prefect.automations import AutomationCore
    from prefect.client.orchestration import SyncPrefectClient

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path(".vqclip-stack")
STATE_FILE = "stack.json"
ENV_FILE = "env.sh"
BUCKET = "vqclip"
PREFIX = "outputs"
REGION = "us-east-1"
CPU_POOL, GPU_POOL = "cpu", "gpu"
PREFECT_FILE = Path("deployments") / "prefect.yaml"
SHARD_DEPLOYMENT = "generate-shard/generate-shard"
# Flow runs send a heartbeat every HEARTBEAT_S (Prefect's minimum is 30); a run that sent one and
# then neither another nor a terminal state within VQCLIP_ZOMBIE_AFTER_S is marked Crashed. The window
# must leave a late heartbeat HEARTBEAT_SLACK_S, or healthy runs on a busy machine are marked Crashed.
HEARTBEAT_S = 30
HEARTBEAT_SLACK_S = 10
ZOMBIE_AUTOMATION = "vqclip-crash-zombie-flow-runs"
RECONCILE_AUTOMATION = "vqclip-reconcile-crashed-runs"
RECONCILE_DEPLOYMENT = "reconcile-runs/reconcile-runs"
SUPERVISOR = "supervisor"
BROWSE = "browse"
WORKER_QUERY_S = 2  # how often a worker asks for work (Prefect's default, 10 s, slows a small stack)

SERVER_START_TIMEOUT_S = 120.0
WEED_START_TIMEOUT_S = 60.0
WORKER_START_TIMEOUT_S = 90.0
DEPLOY_TIMEOUT_S = 240.0


class StackState(BaseModel):
    """What `vqclip up` started and where; saved as `<state_dir>/stack.json` (owner-only: it holds the S3 secret)."""

    state_dir: str
    project_dir: str
    prefect_home: str
    api_url: str
    ui_url: str
    server_port: int
    storage: str
    bucket: str
    s3_endpoint_url: str
    s3_ports: dict[str, int]
    access_key: str
    secret_key: str
    auth_string: str = ""
    browse_port: int = 0
    socket_dir: str
    stray_sockets: list[str] = []
    gpu_workers: int = 0
    running: bool = False
    processes: list[ProcessRecord] = []

    def process(self, name: str) -> ProcessRecord:
        """The record of the process called `name` (e.g. 'worker-gpu-1')."""
        for record in self.processes:
            if record.name == name:
                return record
        raise KeyError(name)

    def client_env(self) -> dict[str, str]:
        """The environment a client of this stack needs (`vqclip submit`, the Prefect CLI, boto3)."""
        return {
            "PREFECT_API_URL": self.api_url,
            "PREFECT_API_AUTH_STRING": self.auth_string,
            "PREFECT_UI_URL": self.ui_url,
            "VQCLIP_STORAGE": self.storage,
            "VQCLIP_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "VQCLIP_S3_PATH_STYLE": "true",
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            **({"VQCLIP_BROWSE_URL": self.browse_url} if self.browse_port else {}),
        }

    @property
    def browse_url(self) -> str:
        """Where the stack's `vqclip serve` shows its bucket (the artifacts link there)."""
        return f"http://127.0.0.1:{self.browse_port}"


def _prefect_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


# ---------------------------------------------------------------- state


def state_path(state_dir: str | Path) -> Path:
    """Where the stack's state file lives."""
    return Path(state_dir) / STATE_FILE


def load_state(state_dir: str | Path = DEFAULT_STATE_DIR) -> StackState | None:
    """The saved stack state, or None when `state_dir` holds none."""
    path = state_path(state_dir)
    if not path.is_file():
        return None
    try:
        return StackState.model_validate_json(path.read_text())
    except ValueError as exc:
        raise StackError(f"{path} is not a stack state file ({exc}); remove it if no stack runs") from None


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only, replacing it atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def save_state(state: StackState) -> None:
    """Write the state file (mode 0600) and the env file for `source`."""
    state_dir = Path(state.state_dir)
    _write_private(state_path(state_dir), state.model_dump_json(indent=2))
    lines = ["# Source this file to use the local vqclip stack: . " + str(state_dir / ENV_FILE)]
    lines += [f"export {name}={_shell_quote(value)}" for name, value in state.client_env().items()]
    lines.append("unset AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3")
    _write_private(state_dir / ENV_FILE, "\n".join(lines) + "\n")


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


# ---------------------------------------------------------------- environment


def _base_env(state: StackState) -> dict[str, str]:
    """This process's environment without any Prefect or AWS setting that could point elsewhere, plus the stack's."""
    drop = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k not in drop}
    env.update(
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_HOME=state.prefect_home,
        # Keep a developer's own AWS config files out: the stack's credentials come from the env.
        AWS_CONFIG_FILE=str(Path(state.state_dir) / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(Path(state.state_dir) / "no-aws-credentials"),
    )
    return env


def server_env(state: StackState) -> dict[str, str]:
    """The Prefect server's environment (its UI must call the API on the stack's port)."""
    return {**_base_env(state), "PREFECT_UI_API_URL": state.api_url, "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
            "PREFECT_SERVER_API_AUTH_STRING": state.auth_string}


def client_env(state: StackState) -> dict[str, str]:
    """The environment of the stack's workers and CLI calls: its API, its store, its credentials."""
    return {**_base_env(state), **state.client_env(), "VQCLIP_PROJECT_DIR": state.project_dir}


def deploy_env(state: StackState) -> dict[str, str]:
    """`prefect deploy`'s environment: VQCLIP_PROJECT_DIR is left out, so the pull step keeps its
    template and each worker resolves it to its own checkout, as on a real cluster."""
    env = client_env(state)
    del env["VQCLIP_PROJECT_DIR"]
    return env


def process_env(state: StackState, name: str) -> dict[str, str]:
    """The environment the stack gives the piece called `name` (for starts and restarts alike)."""
    if name == "prefect-server":
        return server_env(state)
    if name.startswith("worker-"):
        return worker_env(state, gpu=name.startswith(f"worker-{GPU_POOL}-"))
    if name == BROWSE:
        return client_env(state)
    return _base_env(state)


def worker_env(state: StackState, gpu: bool) -> dict[str, str]:
    """A worker's environment: flow-run heartbeats on (for zombie detection), quick polling, and a share of the CPU cores."""
    env = {**client_env(state), "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S), "PREFECT_WORKER_QUERY_SECONDS": str(WORKER_QUERY_S)}
    if gpu and state.gpu_workers > 1 and "OMP_NUM_THREADS" not in env:
        # N "gpu" workers that share this machine's cores would otherwise each start a thread per core.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // state.gpu_workers))
    return env


# ---------------------------------------------------------------- Prefect server API


def _answers(url: str) -> bool:
    """Whether an HTTP server answers `url` with a success."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 400
    except OSError:
        return False


def _api_healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=3) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def prefect_client(state: StackState) -> SyncPrefectClient:
    """A synchronous Prefect client for the stack's API (not this process's configured one)."""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(state.api_url, auth_string=state.auth_string or None)


def _create_pools(state: StackState) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    with prefect_client(state) as client:
        for name in (CPU_POOL, GPU_POOL):
            try:
                client.create_work_pool(
                    WorkPoolCreate(name=name, type=ProcessWorker.type, base_job_template=ProcessWorker.get_default_base_job_template())
                )
            except ObjectAlreadyExists:
                pass


def _deploy(state: StackState) -> None:
    """`prefect deploy --all` of deployments/prefect.yaml, run from the project root with the stack's env."""
    project = Path(state.project_dir)
    if not (project / PREFECT_FILE).is_file():
        raise StackError(f"{project / PREFECT_FILE} is missing: run `vqclip up` from a checkout of vqclip-pipeline")
    log = Path(state.state_dir) / "logs" / "deploy.log"
    command = _prefect_command("--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE))
    with open(log, "ab") as out:
        try:
            result = subprocess.run(command, cwd=project, env=deploy_env(state), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, timeout=DEPLOY_TIMEOUT_S, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise StackError(f"prefect deploy did not finish in {DEPLOY_TIMEOUT_S:.0f} s; log {log}, tail:\n{log_tail(log)}") from None
    if result.returncode != 0:
        raise StackError(f"prefect deploy failed (exit {result.returncode}); log {log}, tail:\n{log_tail(log)}")


def _run_shards_on_any_device(state: StackState) -> None:
    """deployments/prefect.yaml pins shards to CUDA (VQCLIP_DEVICE=cuda) for real GPU workers; on this
    stack the `gpu` workers may have no GPU, so the device follows the worker's env (default: auto)."""
    from prefect.client.schemas.actions import DeploymentUpdate

    with prefect_client(state) as client:
        deployment = client.read_deployment_by_name(SHARD_DEPLOYMENT)
        variables = dict(deployment.job_variables or {})
        env = dict(variables.get("env") or {})
        if "VQCLIP_DEVICE" in env:
            del env["VQCLIP_DEVICE"]
            variables["env"] = env
            client.update_deployment(deployment.id, DeploymentUpdate(job_variables=variables))


def zombie_window_s() -> float:
    """The zombie-run automation's window (VQCLIP_ZOMBIE_AFTER_S), checked against the workers' heartbeat."""
    window, shortest = get_config().zombie_after_s, HEARTBEAT_S + HEARTBEAT_SLACK_S
    if window < shortest:
        raise StackError(
            f"VQCLIP_ZOMBIE_AFTER_S={window:g} is too short: flow runs send a heartbeat every {HEARTBEAT_S} s (Prefect's "
            f"minimum), so a window under {shortest} s marks healthy runs Crashed; set VQCLIP_ZOMBIE_AFTER_S to {shortest} "
            f"or more (default 75), or unset it"
        )
    return window


def zombie_automation() -> AutomationCore:
    """The automation that marks a flow run Crashed when its heartbeats stop (its worker or machine died).

    Prefect's recipe for zombie flow runs: after a `prefect.flow-run.heartbeat`, expect another
    heartbeat or a terminal state within zombie_window_s(); if none comes, change the run to CRASHED.
    """
    from prefect.automations import AutomationCore, ChangeFlowRunState, EventTrigger, Posture
    from prefect.client.schemas.objects import StateType

    window = zombie_window_s()
    terminal = {f"prefect.flow-run.{name}" for name in ("Completed", "Failed", "Cancelled", "Crashed")}
    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description=f"Mark a flow run Crashed when no heartbeat or terminal state follows its last heartbeat within {window:g} s.",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *terminal},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=window),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=f"No heartbeat for {window:g} s: the flow-run process or its worker is gone.")],
    )


def reconcile_automation(deployment_id: UUID) -> AutomationCore:
    """The automation that runs the reconcile-runs deployment whenever a flow run is marked Crashed.

    The reconciler resumes lost batch runs (flows/reconcile.py); its schedule in
    deployments/prefect.yaml is the safety net for an event this misses.
    """
    from prefect.automations import AutomationCore, EventTrigger, Posture, RunDeployment

    return AutomationCore(
        name=RECONCILE_AUTOMATION,
        description="Resume (or fail, after too many tries) batch runs whose process was lost.",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            expect={"prefect.flow-run.Crashed"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[RunDeployment(source="selected", deployment_id=deployment_id, parameters={})],
    )


def install_automations(client: SyncPrefectClient) -> None:
    """(Re)create the zombie-run and reconcile automations; the reconcile-runs deployment must exist."""
    reconcile = client.read_deployment_by_name(RECONCILE_DEPLOYMENT)
    for automation in (zombie_automation(), reconcile_automation(reconcile.id)):
        for old in client.read_automations_by_name(automation.name):
            client.delete_automation(old.id)
        client.create_automation(automation)


def crash_orphaned_runs(client: SyncPrefectClient) -> list[str]:
    """Mark every flow run left in flight by a stack that stopped Crashed (the reconciler then resumes
    the batches), and cancel the shard runs that never started; return the names of the runs changed.

    Only for a server whose workers are all gone, as when `vqclip up` starts after `down` or a reboot.
    """
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled, Crashed

    in_flight = [StateType.RUNNING, StateType.PENDING, StateType.CANCELLING, StateType.SCHEDULED]
    found = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=in_flight))))
    changed = []
    for run in found:
        if run.state.type == StateType.SCHEDULED:
            if run.parameters.get("shard") is None or run.parameters.get("run_id") is None:
                continue  # scheduled runs of their own (the watcher, a nightly batch) start as planned
            state = Cancelled(message="its batch run was stopped with the stack before this shard started")
        else:
            state = Crashed(message="the local stack stopped while this run was in progress (vqclip down, a kill or a reboot)")
        client.set_flow_run_state(run.id, state, force=True)
        changed.append(run.name)
    return changed


def _worker_names(state: StackState, pool: str) -> set[str]:
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus

    with prefect_client(state) as client:
        online = WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"]))
        return {worker.name for worker in client.read_workers_for_work_pool(pool, worker_filter=online)}


# ---------------------------------------------------------------- start and stop


def _new_state(state_dir: Path, project_dir: Path, gpu_workers: int, previous: StackState | None) -> StackState:
    """Ports, credentials and paths for a start: a previous run's credentials and ports where they are still free."""
    server_port = previous.server_port if previous and can_bind(previous.server_port) else free_ports(1)[0]
    browse_port = previous.browse_port if previous and previous.browse_port and can_bind(previous.browse_port) else free_ports(1)[0]
    s3_ports = previous.s3_ports if previous and all(can_bind(p) for p in previous.s3_ports.values()) else None
    if s3_ports is None or set(s3_ports) != set(PORT_NAMES):
        s3_ports = {}
    api_url = f"http://127.0.0.1:{server_port}/api"
    return StackState(
        state_dir=str(state_dir),
        project_dir=str(project_dir),
        prefect_home=str(state_dir / "prefect"),
        api_url=api_url,
        ui_url=f"http://127.0.0.1:{server_port}",
        server_port=server_port,
        browse_port=browse_port,
        storage=f"s3://{BUCKET}/{PREFIX}",
        bucket=BUCKET,
        s3_endpoint_url="",
        s3_ports=s3_ports,
        access_key=previous.access_key if previous else "VQSTACK" + secrets.token_hex(7).upper(),
        secret_key=previous.secret_key if previous else secrets.token_hex(20),
        # "user:password", the form Prefect's UI login asks for.
        auth_string=previous.auth_string if previous and previous.auth_string else f"vqclip:{secrets.token_hex(16)}",
        # weed's unix sockets need a short path; the state folder may be deep.
        socket_dir=tempfile.mkdtemp(prefix="vqstack-"),
        gpu_workers=gpu_workers,
    )


def default_project_dir() -> Path:
    """The checkout to deploy: this folder when it holds deployments/prefect.yaml, else the one this package runs from."""
    here = Path.cwd()
    return here if (here / PREFECT_FILE).is_file() else Path(__file__).resolve().parents[1]


def start_stack(
    state_dir: str | Path = DEFAULT_STATE_DIR,
    gpu_workers: int = 2,
    project_dir: str | Path | None = None,
    report: Callable[[str], None] = logger.info,
) -> StackState:
    """Start the whole stack and return its state (also saved in `state_dir`); on any failure stop what started."""
    if gpu_workers < 1:
        raise StackError("a stack needs at least one gpu worker")
    zombie_window_s()  # a bad window fails before anything starts
    state_dir = Path(state_dir).resolve()
    project_dir = Path(project_dir).resolve() if project_dir else default_project_dir()
    previous = load_state(state_dir)
    if previous and previous.running and any(is_alive(p.pid, p.started) for p in previous.processes):
        if not _supervisor_alive(previous):
            report("the stack runs without its supervisor: starting it (it restarts the missing pieces)")
            start_supervisor(previous)
            return previous
        raise StackError(f"a stack from {state_dir} is running already (UI {previous.ui_url}), supervised: a piece that "
                         f"dies is restarted (`vqclip status` shows each); stop it with `vqclip down --state-dir {state_dir}`")
    for sub in ("logs", "prefect", "seaweedfs"):
        (state_dir / sub).mkdir(parents=True, exist_ok=True)
    state = _new_state(state_dir, project_dir, gpu_workers, previous)
    state.running = True
    logs = state_dir / "logs"
    try:
        report(f"starting the Prefect server on {state.ui_url}")
        server = spawn(
            "prefect-server",
            _prefect_command("server", "start", "--host", "127.0.0.1", "--port", str(state.server_port), "--analytics-off"),
            logs / "prefect-server.log", process_env(state, "prefect-server"), project_dir,
        )
        state.processes.append(server)
        save_state(state)

        report("starting SeaweedFS")
        weed = SeaweedServer(state_dir / "seaweedfs", state.access_key, state.secret_key, ports=state.s3_ports or None,
                             socket_dir=Path(state.socket_dir), identity_name="vqclip-stack", probe_bucket=BUCKET)
        state.s3_ports, state.s3_endpoint_url = weed.ports, weed.endpoint_url
        state.stray_sockets = [str(s) for s in weed.stray_sockets]
        try:
            weed.start(WEED_START_TIMEOUT_S)
        finally:
            if weed.pid is not None:
                state.processes.append(ProcessRecord(name="seaweedfs", pid=weed.pid, started=start_ticks(weed.pid) or 0,
                                                     log=str(weed.log_path), command=weed.args, cwd=str(weed.base),
                                                     started_at=time.time()))
            save_state(state)

        report(f"starting the read-only browser view of the bucket on {state.browse_url}")
        browse = spawn(BROWSE, [sys.executable, "-m", "vqclip.cli", "serve", "--storage", state.storage, "--port", str(state.browse_port)],
                       logs / "browse.log", process_env(state, BROWSE), project_dir)
        state.processes.append(browse)
        save_state(state)

        wait_for("Prefect server", lambda: _api_healthy(state.api_url), SERVER_START_TIMEOUT_S, server)
        wait_for("the browser view", lambda: _answers(state.browse_url), SERVER_START_TIMEOUT_S, browse)
        report("creating work pools, deployments and automations")
        _create_pools(state)
        _deploy(state)
        _run_shards_on_any_device(state)
        with prefect_client(state) as client:
            install_automations(client)
            orphans = crash_orphaned_runs(client)
            if orphans:
                report(f"marked {len(orphans)} flow runs the last stack left in flight Crashed or Cancelled: {', '.join(orphans)}")
                # At once rather than through the automation, whose trigger may not be evaluating events yet.
                client.create_flow_run_from_deployment(client.read_deployment_by_name(RECONCILE_DEPLOYMENT).id)

        workers = [(CPU_POOL, "cpu-1")] + [(GPU_POOL, f"gpu-{n}") for n in range(1, gpu_workers + 1)]
        report(f"starting workers {', '.join(name for _, name in workers)}")
        records = {}
        for pool, name in workers:
            command = _prefect_command("worker", "start", "--pool", pool, "--name", name, "--type", "process",
                                       "--install-policy", "never", "--no-create-pool-if-not-found",
                                       *(["--limit", "1"] if pool == GPU_POOL else []))
            records[name] = spawn(f"worker-{name}", command, logs / f"worker-{name}.log", process_env(state, f"worker-{name}"), project_dir)
            state.processes.append(records[name])
        save_state(state)
        for pool, name in workers:
            wait_for(f"worker {name} on pool {pool}", lambda: name in _worker_names(state, pool), WORKER_START_TIMEOUT_S, records[name])
        start_supervisor(state)
    except BaseException:
        stop_processes(state)
        raise
    save_state(state)
    return state


def _supervisor_alive(state: StackState) -> bool:
    return any(r.name == SUPERVISOR and is_alive(r.pid, r.started) for r in state.processes)


def start_supervisor(state: StackState) -> None:
    """Start the process that restarts the stack's pieces when they die (vqclip/stack/supervisor.py), and record it."""
    command = [sys.executable, "-m", "vqclip.stack.supervisor", state.state_dir]
    record = spawn(SUPERVISOR, command, Path(state.state_dir) / "logs" / "supervisor.log", _base_env(state), Path(state.project_dir))
    state.processes = [r for r in state.processes if r.name != SUPERVISOR] + [record]
    save_state(state)


def _uses_folder(pid: int, folder: str) -> bool:
    """Whether process `pid`'s command line or environment names `folder` (a weed -dir, a PREFECT_HOME)."""
    for part in ("cmdline", "environ"):
        try:
            if folder.encode() in Path(f"/proc/{pid}/{part}").read_bytes():
                return True
        except OSError:
            pass
    return False


def stop_processes(state: StackState) -> list[str]:
    """Stop the state's processes that still run, and anything else listening on the stack's ports; return their names.

    The supervisor goes first (so it restarts nothing), then the workers and their flow runs (so
    none starts a flow run while the servers go), then the servers.
    """
    supervisors = [r for r in state.processes if r.name == SUPERVISOR and is_alive(r.pid, r.started)]
    if supervisors:
        kill_tree([record.pid for record in supervisors])
        state = load_state(state.state_dir) or state  # it may have restarted a piece meanwhile
    alive = [record for record in state.processes if record.name != SUPERVISOR and is_alive(record.pid, record.started)]
    workers = [record for record in alive if record.name.startswith("worker-")]
    servers = [record for record in alive if record not in workers]
    for batch in (workers, servers):
        kill_tree([record.pid for record in batch])
    # A server someone restarted by hand on the stack's ports (its data in the state folder) is the stack's too.
    strays = {pid for pid in listening_pids([state.server_port, *state.s3_ports.values(), *([state.browse_port] if state.browse_port else [])]) if _uses_folder(pid, state.state_dir)}
    kill_tree(strays)
    for sock in state.stray_sockets:
        Path(sock).unlink(missing_ok=True)
    shutil.rmtree(state.socket_dir, ignore_errors=True)
    state.running = False
    save_state(state)
    return [record.name for record in supervisors + alive] + [f"pid {pid} (listening on a stack port)" for pid in sorted(strays)]


def stop_stack(state_dir: str | Path = DEFAULT_STATE_DIR) -> list[str]:
    """Stop the stack recorded in `state_dir`, by pid; safe to call again (then it stops nothing)."""
    state = load_state(Path(state_dir).resolve())
    if state is None:
        return []
    return stop_processes(state)


# ---------------------------------------------------------------- health


class PieceHealth(BaseModel):
    """One recorded process of the stack, as `vqclip status` shows it."""

    name: str
    pid: int
    running: bool
    restarts: int
    since: str
    log: str


class StackHealth(BaseModel):
    """Each piece's process, and whether the API, the store and the workers answer."""

    pieces: list[PieceHealth]
    checks: dict[str, bool]

    @property
    def healthy(self) -> bool:
        return all(piece.running for piece in self.pieces) and all(self.checks.values())


def _s3_healthy(state: StackState) -> bool:
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3", endpoint_url=state.s3_endpoint_url, region_name=REGION, aws_access_key_id=state.access_key,
        aws_secret_access_key=state.secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=3, read_timeout=5),
    )
    try:
        client.head_bucket(Bucket=state.bucket)
    except Exception:  # any failure means: not healthy
        return False
    return True


def stack_health(state_dir: str | Path = DEFAULT_STATE_DIR) -> StackHealth:
    """The health of the stack recorded in `state_dir`."""
    state = load_state(Path(state_dir).resolve())
    if state is None:
        raise StackError(f"no stack recorded in {state_dir}; start one with `vqclip up`")
    pieces = [
        PieceHealth(name=r.name, pid=r.pid, running=state.running and is_alive(r.pid, r.started), restarts=r.restarts,
                    since=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started_at)) if r.started_at else "-", log=r.log)
        for r in state.processes
    ]
    checks = {f"Prefect API answers at {state.api_url}": state.running and _api_healthy(state.api_url),
              f"S3 bucket {state.bucket} answers at {state.s3_endpoint_url}": state.running and _s3_healthy(state)}
    if state.browse_port:
        checks[f"the browser view answers at {state.browse_url}"] = state.running and _answers(state.browse_url)
    for pool, wanted in ((CPU_POOL, 1), (GPU_POOL, state.gpu_workers)):
        try:
            online = len(_worker_names(state, pool)) if checks[f"Prefect API answers at {state.api_url}"] else 0
        except Exception:  # an API that fails here counts as no worker seen
            online = 0
        checks[f"{online} of {wanted} workers online in pool {pool}"] = online >= wanted
    return StackHealth(pieces=pieces, checks=checks)
