"""The deployment files agree with the code and with each other.

deployments/prefect.yaml, deployments/k8s-gpu-pool.json, deployments/README.md, docker/compose.yaml,
docker/*.Dockerfile, docker/*.sh and .env.example are read as files (nothing is built or started):
entrypoints name flows with the right names and parameters, pools, ports, paths and environment
variables match across files, and Prefect's own loaders accept what Prefect will read.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = ROOT / "deployments" / "prefect.yaml"
K8S_TEMPLATE = ROOT / "deployments" / "k8s-gpu-pool.json"
DEPLOY_README = ROOT / "deployments" / "README.md"
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
SCRIPTS = sorted((ROOT / "docker").glob("*.sh"))

# The flows the deployments run, as their authors define them: entrypoint -> (flow name, the
# parameters the flow must accept).
FLOWS = {
    "flows/batch.py:batch_generate": ("batch-generate", {"manifest", "storage", "run_id", "preset", "shard_deployment"}),
    "flows/shard.py:generate_shard_flow": ("generate-shard", {"storage", "run_id", "shard"}),
    "flows/reconcile.py:reconcile_runs": ("reconcile-runs", {"max_attempts", "window_hours"}),
    "flows/search.py:search_images": ("search-images", {"query", "storage", "runs", "top", "image_key"}),
    "flows/watch.py:watch_inbox": ("watch-inbox", {"storage", "batch_deployment", "shard_deployment"}),
}
POOLS = {"cpu", "gpu"}
# Variables compose may pass that no code of ours reads: boto3's standard chain, the postgres
# image's setup, and the telemetry opt-out Prefect honours.
EXTERNAL_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "DO_NOT_TRACK",
                "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}
ENV_PLACEHOLDER = re.compile(r"\{\{\s*\$(\w+)\s*\}\}")  # Prefect's "{{ $NAME }}"
INTERPOLATION = re.compile(r"(?<!\$)\$\{(\w+)(?:(:?[-?])([^}]*))?\}")  # compose's ${NAME}, ${NAME:-x}, ${NAME:?x}


# ---------------------------------------------------------------- readers


def prefect_config() -> dict[str, Any]:
    return yaml.safe_load(PREFECT_FILE.read_text())


DEPLOYMENTS: list[dict[str, Any]] = prefect_config()["deployments"]


def deployment(name: str) -> dict[str, Any]:
    (found,) = [d for d in DEPLOYMENTS if d["name"] == name]
    return found


def deployment_refs() -> set[str]:
    """The "flow-name/deployment-name" of every deployment in prefect.yaml."""
    return {f"{FLOWS[d['entrypoint']][0]}/{d['name']}" for d in DEPLOYMENTS if d["entrypoint"] in FLOWS}


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def strings(node: Any) -> list[str]:
    """Every string value in a parsed YAML/JSON tree (comments are not in it)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return []


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation, with `env` as the .env file."""
    def value(match: re.Match[str]) -> str:
        name, op, default = match.groups()
        given = env.get(name, "")
        if op in (":-", "-") and (not given if op == ":-" else name not in env):
            return default
        return given

    return INTERPOLATION.sub(value, text).replace("$$", "$")


def resolved_compose() -> dict[str, Any]:
    """compose.yaml as Compose would run it with .env.example as its .env."""
    env = env_example()
    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return interpolate(node, env)
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(compose())


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def option(args: list[str], flag: str) -> str | None:
    """The value after `flag` in an argument list."""
    return args[args.index(flag) + 1] if flag in args else None


def published(service: dict[str, Any]) -> list[tuple[int, int]]:
    """(host port, container port) pairs of a resolved service's `ports`."""
    pairs = []
    for entry in service.get("ports", []):
        *_, host, container = str(entry).split(":")
        pairs.append((int(host), int(container.split("/")[0])))
    return pairs


def gpu_workers(services: dict[str, Any]) -> dict[str, Any]:
    def wants_gpu(service: dict[str, Any]) -> bool:
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        return any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)

    return {name: s for name, s in services.items() if wants_gpu(s)}


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            instruction, _, args = current.strip().partition(" ")
            logical.append((instruction.upper(), args.strip()))
        current = ""
    return logical


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def dockerfile_env(path: Path) -> dict[str, str]:
    env = {}
    for instruction, args in dockerfile(path):
        if instruction == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    return env


def settings_env_names() -> set[str]:
    """The environment variables vqclip's settings read."""
    from vqclip.config import Config

    prefix = Config.model_config["env_prefix"]
    return {f"{prefix}{name}".upper() for name in Config.model_fields}


def prefect_setting_names() -> set[str]:
    from prefect.settings import Config
    from prefect.settings.legacy import _get_valid_setting_names

    return set(_get_valid_setting_names(Config))


# ---------------------------------------------------------------- prefect.yaml and the flows


def test_prefect_reads_prefect_yaml_without_complaint():
    """`prefect deploy` skips a file it cannot validate with only a warning: load it the same way."""
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from rich.console import Console

    console = Console(record=True, width=200)
    configs, actions = _load_deploy_configs_and_actions(PREFECT_FILE, console=console)
    assert console.export_text() == ""
    assert [c["name"] for c in configs] == [d["name"] for d in DEPLOYMENTS]
    assert len({(c["entrypoint"], c["name"]) for c in configs}) == len(configs)
    for config in configs:
        for schedule in config.get("schedules") or []:
            _schedule_config_to_deployment_schedule(schedule)  # the schedule objects deploy makes
    (step,) = actions["pull"]
    assert list(step) == ["prefect.deployments.steps.set_working_directory"]


def test_every_deployment_runs_a_known_flow_on_a_known_pool():
    assert {d["entrypoint"] for d in DEPLOYMENTS} == set(FLOWS)
    assert {d["work_pool"]["name"] for d in DEPLOYMENTS} == POOLS
    assert deployment("generate-shard")["work_pool"]["name"] == "gpu"
    assert deployment("generate-shard")["work_pool"]["job_variables"]["env"]["VQCLIP_DEVICE"] == "cuda"
    assert all(isinstance(v, str) for v in deployment("generate-shard")["work_pool"]["job_variables"]["env"].values())


@pytest.mark.parametrize("entrypoint", sorted(FLOWS))
def test_entrypoint_defines_the_flow(entrypoint):
    path, function = entrypoint.split(":")
    name, parameters = FLOWS[entrypoint]
    source = ROOT / path
    assert source.is_file(), f"{entrypoint}: {path} does not exist"
    tree = ast.parse(source.read_text(), filename=path)
    defined = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == function]
    assert defined, f"{path} defines no top-level function {function}"

    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, function)
    from prefect import Flow

    assert isinstance(flow, Flow), f"{entrypoint} is not a Prefect flow"
    assert flow.name == name
    signature = inspect.signature(flow.fn)
    assert parameters <= set(signature.parameters), f"{entrypoint} lacks parameters {parameters - set(signature.parameters)}"
    for parameter, spec in signature.parameters.items():
        if parameter.endswith("_deployment") and spec.default is not inspect.Parameter.empty and spec.default is not None:
            assert spec.default in deployment_refs(), f"{entrypoint}: default {parameter}={spec.default!r} names no deployment in prefect.yaml"


@pytest.mark.parametrize("name", [d["name"] for d in DEPLOYMENTS])
def test_deployment_parameters_fit_the_flow(name):
    config = deployment(name)
    path, function = config["entrypoint"].split(":")
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), function)
    signature = inspect.signature(flow.fn).parameters
    given = config.get("parameters") or {}
    assert set(given) <= set(signature), f"{name}: parameters {set(given) - set(signature)} are not in {config['entrypoint']}"
    if config.get("schedules"):  # nobody is there to supply a scheduled run's required parameters
        required = {p for p, spec in signature.items() if spec.default is inspect.Parameter.empty}
        assert required <= set(given), f"{name} is scheduled but does not give {required - set(given)}"
    for key, value in given.items():
        if key.endswith("_deployment"):
            assert value in deployment_refs(), f"{name}: {key}={value!r} names no deployment in prefect.yaml"


def test_templated_variables_are_set_where_prefect_resolves_them():
    """Parameters are resolved by `prefect deploy` (compose's init), pull steps by the flow-run process (the images)."""
    config = prefect_config()
    deploy_env = compose()["services"]["init"]["environment"]
    for name in {v for d in DEPLOYMENTS for v in ENV_PLACEHOLDER.findall(json.dumps(d.get("parameters") or {}))}:
        assert name in deploy_env, f"prefect.yaml parameters use {{{{ ${name} }}}} but compose's init does not set {name}"
    pull_vars = set(ENV_PLACEHOLDER.findall(json.dumps(config["pull"])))
    assert pull_vars == {"VQCLIP_PROJECT_DIR"}
    for path in DOCKERFILES:
        workdir = [args for instruction, args in dockerfile(path) if instruction == "WORKDIR"][-1]
        assert dockerfile_env(path)["VQCLIP_PROJECT_DIR"] == workdir, f"{path.name}: VQCLIP_PROJECT_DIR is not the WORKDIR holding the code"


def test_nightly_manifest_is_in_the_default_store_bucket():
    manifest = urlsplit(deployment("nightly-batch")["parameters"]["manifest"])
    assert manifest.scheme == "s3" and manifest.path.endswith((".yaml", ".yml", ".json", ".jsonl", ".csv"))
    assert manifest.netloc == urlsplit(env_example()["VQCLIP_STORAGE"]).netloc


# ---------------------------------------------------------------- pools and workers across files


def test_pools_and_worker_commands_agree():
    services = resolved_compose()["services"]
    workers = {name: command(s) for name, s in services.items() if command(s)[:3] == ["prefect", "worker", "start"]}
    assert {option(args, "--pool") for args in workers.values()} == POOLS
    names = [option(args, "--name") for args in workers.values()]
    assert None not in names and len(set(names)) == len(names), "each compose worker needs a name of its own"
    assert set(gpu_workers(services)) == {name for name, args in workers.items() if option(args, "--pool") == "gpu"}
    for name in gpu_workers(services):
        assert option(workers[name], "--limit") == "1", f"{name} must take one shard at a time"

    for path in DOCKERFILES:
        cmd = exec_form([args for instruction, args in dockerfile(path) if instruction == "CMD"][-1])
        assert cmd[:3] == ["prefect", "worker", "start"] and option(cmd, "--pool") in POOLS, path.name
        if option(cmd, "--pool") == "gpu":
            assert option(cmd, "--limit") == "1", path.name

    readme = DEPLOY_README.read_text()
    assert set(re.findall(r"prefect work-pool create (\w+) --type process", readme)) == POOLS
    started = re.findall(r"prefect worker start --pool (\w+)(.*)", readme)
    assert {pool for pool, _ in started} == POOLS
    assert all("--limit 1" in rest for pool, rest in started if pool == "gpu" and "kubernetes" not in rest)
    assert "--type kubernetes --base-job-template deployments/k8s-gpu-pool.json" in readme
    assert "prefect deploy --all --prefect-file deployments/prefect.yaml" in readme

    init = (ROOT / "docker" / "init.sh").read_text()
    assert set(re.search(r"for pool in ([\w ]+); do", init).group(1).split()) == POOLS
    assert "deploy --all --prefect-file deployments/prefect.yaml" in init


# ---------------------------------------------------------------- compose and .env.example


def test_compose_environment_is_read_by_someone_and_defined_in_env_example():
    raw, env = compose(), env_example()
    used = {m.group(1) for s in strings(raw) for m in INTERPOLATION.finditer(s)}
    assert used == set(env), f"only in compose: {used - set(env)}; only in .env.example: {set(env) - used}"
    known = settings_env_names() | prefect_setting_names() | EXTERNAL_ENV
    for name, service in raw["services"].items():
        for key in service.get("environment", {}):
            assert key in known, f"{name}: {key} is read by neither vqclip's settings, Prefect, boto3 nor postgres"
    weed_script = (ROOT / "docker" / "seaweedfs-entrypoint.sh").read_text()
    for key in raw["services"]["seaweedfs"]["environment"]:
        assert f"${key}" in weed_script or f"${{{key}" in weed_script
    template = (ROOT / "docker" / "seaweedfs-s3.json.template").read_text()
    json.loads(re.sub(r"\$\{(\w+)\}", "x", template))
    for key in re.findall(r"\$\{(\w+)\}", template):
        assert key in raw["services"]["seaweedfs"]["environment"]
    secrets = {"AWS_SECRET_ACCESS_KEY", "POSTGRES_PASSWORD"}
    for text in strings(raw):
        for m in INTERPOLATION.finditer(text):
            assert m.group(1) not in secrets or m.group(2) in (":?", None), f"{m.group(1)} must have no default in compose"


def test_compose_ports_and_urls_agree():
    services = resolved_compose()["services"]
    container_ports = {name: {c for _, c in published(s)} for name, s in services.items()}
    host_ports = {h for s in services.values() for h, _ in published(s)}
    server = services["server"]
    assert int(option(command(server), "--port")) in container_ports["server"]
    assert "PREFECT_API_URL" not in server["environment"], "the UI would call PREFECT_API_URL from the browser"
    urls = [(name, key, value) for name, s in services.items() for key, value in (s.get("environment") or {}).items()
            if isinstance(value, str) and value.startswith("http")]
    assert {key for _, key, _ in urls} >= {"PREFECT_API_URL", "PREFECT_UI_API_URL", "VQCLIP_S3_ENDPOINT_URL"}
    for name, key, value in urls:
        url = urlsplit(value)
        if url.hostname in ("localhost", "127.0.0.1"):
            assert url.port in host_ports, f"{name}: {key}={value} but no service publishes port {url.port}"
        else:
            assert url.port in container_ports.get(url.hostname, set()), f"{name}: {key}={value} reaches no published port of a service"
        if key.startswith("PREFECT_") and key.endswith("API_URL"):
            assert url.path == "/api"
    ui = urlsplit(server["environment"]["PREFECT_UI_API_URL"])
    assert (ui.port, int(option(command(server), "--port"))) in published(server)
    weed_script = (ROOT / "docker" / "seaweedfs-entrypoint.sh").read_text()
    assert int(re.search(r"-s3\.port=(\d+)", weed_script).group(1)) in container_ports["seaweedfs"]
    for name in ("postgres", "server", "seaweedfs"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_compose_paths_exist():
    raw = compose()
    base = COMPOSE_FILE.parent
    for name, service in raw["services"].items():
        build = service.get("build")
        if build:
            context = (base / build["context"]).resolve()
            assert context == ROOT, f"{name}: images are built from the repository root"
            assert (context / build["dockerfile"]).is_file()
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (base / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in raw["volumes"], f"{name} uses undeclared volume {source}"
    for path in DOCKERFILES:
        pinned = [args.split("=", 1)[1] for instruction, args in dockerfile(path) if instruction == "ARG" and args.startswith("PREFECT_VERSION=")]
        assert raw["services"]["server"]["image"].startswith(f"prefecthq/prefect:{pinned[0]}-"), f"{path.name} and the server run different Prefect versions"


# ---------------------------------------------------------------- Dockerfiles and scripts


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile(path):
    instructions = dockerfile(path)
    ignore = [line.strip() for line in Path(f"{path}.dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "the build context is a whitelist"
    for instruction, args in instructions:
        if instruction in ("COPY", "ADD"):
            *sources, _ = [a for a in shlex.split(args) if not a.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"{path.name} copies {source}, which does not exist"
                assert f"!{source.rstrip('/').split('/')[0]}" in ignore, f"{path.name} copies {source}, which its .dockerignore leaves out"
    assert exec_form([a for i, a in instructions if i == "ENTRYPOINT"][-1])[0].endswith("/tini")
    user = [a for i, a in instructions if i == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    env = dockerfile_env(path)
    assert env["VQCLIP_CACHE_DIR"] in [a for i, a in instructions if i == "VOLUME"]
    for key in env:
        assert not key.startswith("VQCLIP_") or key in settings_env_names() | {"VQCLIP_PROJECT_DIR"}, f"{path.name}: nothing reads {key}"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_shell_script_parses(path):
    subprocess.run(["sh", "-n", str(path)], check=True)
    for snippet in re.findall(r"<<'PY'\n(.*?)\nPY\n", path.read_text(), flags=re.S):
        compile(snippet, f"{path.name} (python)", "exec")


@pytest.mark.parametrize("path", [DEPLOY_README, *SCRIPTS], ids=lambda p: p.name)
def test_named_paths_and_imports_exist(path):
    text = path.read_text()
    # Repository paths only: not parts of URLs or absolute paths (s3://vqclip/..., /opt/vqclip/...).
    for named in set(re.findall(r"(?<![/\w.-])((?:deployments|docker|flows|tasks|vqclip)/[\w./-]*\w)", text)):
        assert (ROOT / named).exists(), f"{path.name} names {named}, which does not exist"
    for module, names in re.findall(r"from (vqclip[\w.]*) import ([\w, ]+)", text):
        imported = importlib.import_module(module)
        for name in names.replace(" ", "").split(","):
            assert hasattr(imported, name), f"{path.name} imports {name} from {module}, which has none"


# ---------------------------------------------------------------- Kubernetes work-pool template


def test_k8s_gpu_pool_template():
    from jsonschema import Draft7Validator
    from prefect.server.schemas.actions import WorkPoolCreate
    from prefect.workers.base import BaseJobConfiguration

    template = json.loads(K8S_TEMPLATE.read_text())
    WorkPoolCreate(name="gpu", type="kubernetes", base_job_template=template)  # the server's own check
    variables = template["variables"]
    Draft7Validator.check_schema(variables)
    for name, spec in variables["properties"].items():
        if "default" in spec:
            schema = {k: v for k, v in spec.items() if k != "default"}
            Draft7Validator(schema).validate(spec["default"])

    class Rendered(BaseJobConfiguration):
        model_config = {"extra": "allow"}

    # What a worker builds for a generate-shard run; no placeholder here needs the API (client unused).
    job_variables = deployment("generate-shard")["work_pool"]["job_variables"]
    config = asyncio.run(Rendered.from_template_and_values(template, job_variables, client=object())).model_dump()
    pod = config["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "prefect-job"  # the Kubernetes worker requires this name
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert pod["nodeSelector"] and pod["tolerations"]
    (mount,) = container["volumeMounts"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["claimName"]
    assert config["env"]["VQCLIP_CACHE_DIR"] == mount["mountPath"]
    assert config["env"]["VQCLIP_DEVICE"] == "cuda"  # the deployment's env merged over the pool's
