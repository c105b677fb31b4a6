"""The container definitions, checked without a Docker engine (none runs in this build).

Dockerfiles are parsed as text; the compose file is validated with ``docker-compose
config -q`` when docker-compose is installed and parsed as YAML always; the container
scripts (entrypoint, health check) are run for real on this machine.
"""

from __future__ import annotations

import configparser
import http.server
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = ["egress.Dockerfile", "sft-agent.Dockerfile", "receiver.Dockerfile"]
OUR_IMAGES = {"docker/egress.Dockerfile", "docker/sft-agent.Dockerfile", "docker/receiver.Dockerfile"}
UID = "10001"


# --------------------------------------------------------------------------- Dockerfile parsing


@dataclass
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD, else None."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text.split(" CMD ", 1)[1] if " CMD " in f" {text}" else ""
        text = text.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list)
        return [str(v) for v in value]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages with their instructions; continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif keyword == "ARG" and not stages:
            continue  # an ARG before the first FROM parameterises the base images
        else:
            assert stages, f"{path}: {keyword} before FROM"
            stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return stages


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    return parser


def console_scripts() -> set[str]:
    entries = setup_cfg()["options.entry_points"]["console_scripts"]
    return {line.split("=", 1)[0].strip() for line in entries.strip().splitlines() if "=" in line}


def wheel_name() -> str:
    """The file-name form of the distribution name (PEP 427): data-egress → data_egress."""
    return re.sub(r"[-_.]+", "_", setup_cfg()["metadata"]["name"]).lower()


@pytest.fixture(params=DOCKERFILES)
def dockerfile(request: pytest.FixtureRequest) -> Path:
    return DOCKER / str(request.param)


def test_dockerfile_is_multi_stage_with_a_builder(dockerfile: Path) -> None:
    stages = parse_dockerfile(dockerfile)
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    builders = {stage.name for stage in stages[:-1] if stage.name}
    copies_from = [
        re.search(r"--from=(\S+)", copy.args) for copy in stages[-1].all("COPY") if "--from=" in copy.args
    ]
    assert {m.group(1) for m in copies_from if m} & builders, "the runtime copies from a builder stage"
    assert all("python:3.11" in stage.base or "PYTHON_IMAGE" in stage.base for stage in stages)
    text = dockerfile.read_text(encoding="utf-8")
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M), "slim python 3.11 runtime"


def test_dockerfile_installs_the_wheel_built_from_this_repository(dockerfile: Path) -> None:
    builder, runtime = parse_dockerfile(dockerfile)[0], parse_dockerfile(dockerfile)[-1]
    copied = " ".join(copy.args for copy in builder.all("COPY"))
    for needed in ("setup.cfg", "pyproject.toml", "egress/", "sft_agent/"):
        assert needed in copied, f"builder copies {needed}"
    runs = " ".join(run.args for run in builder.all("RUN"))
    assert re.search(r"pip wheel .*--no-deps .*--wheel-dir /wheels \.(\s|$)", runs), (
        "a wheel of the repo root"
    )
    assert f"/wheels/{wheel_name()}-*.whl" in runs, f"installs the {wheel_name()} wheel named by setup.cfg"
    # The runtime gets the installed venv, never the sources.
    runtime_copies = [copy.args for copy in runtime.all("COPY")]
    assert any("--from=builder /opt/venv" in args for args in runtime_copies)
    assert not any(re.search(r"(^|\s)(egress|sft_agent)/?(\s|$)", args) for args in runtime_copies)


def test_dockerfile_runs_as_a_non_root_user(dockerfile: Path) -> None:
    runtime = parse_dockerfile(dockerfile)[-1]
    user = runtime.last("USER")
    assert user is not None, "the runtime stage sets USER"
    uid = user.args.split(":")[0]
    assert uid == UID
    users = [i for i in runtime.instructions if i.keyword in {"USER", "CMD", "ENTRYPOINT"}]
    assert users[0].keyword == "USER", "USER comes before the command"
    runs = " ".join(run.args for run in runtime.all("RUN"))
    assert f"--uid {UID}" in runs, "the user exists in /etc/passwd (names in logs, ownership)"


def test_dockerfile_is_read_only_root_friendly(dockerfile: Path) -> None:
    runtime = parse_dockerfile(dockerfile)[-1]
    volumes = json.loads(runtime.last("VOLUME").args)  # type: ignore[union-attr]
    assert "/tmp" in volumes
    if dockerfile.name != "receiver.Dockerfile":
        assert "/data-egress" in volumes
    env = " ".join(i.args for i in runtime.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "no .pyc written next to the code at run time"


def test_dockerfile_healthcheck_uses_python_not_curl(dockerfile: Path) -> None:
    runtime = parse_dockerfile(dockerfile)[-1]
    healthcheck = runtime.last("HEALTHCHECK")
    assert healthcheck is not None
    command = healthcheck.exec_form()
    assert command is not None and command[:2] == ["python", "/usr/local/bin/healthcheck.py"]
    if dockerfile.name != "receiver.Dockerfile":  # the receiver answers only with a client certificate
        assert command[2:4] == ["http", "/healthz"]
    assert "curl" not in dockerfile.read_text(encoding="utf-8")
    assert "urllib.request" in (DOCKER / "healthcheck.py").read_text(encoding="utf-8")


def test_dockerfile_command_is_a_console_script_of_setup_cfg(dockerfile: Path) -> None:
    runtime = parse_dockerfile(dockerfile)[-1]
    entrypoint = runtime.last("ENTRYPOINT")
    assert entrypoint is not None
    argv = entrypoint.exec_form()
    assert argv, "exec-form ENTRYPOINT, so the program is PID 1 and gets SIGTERM"
    program = argv[0]
    if program.endswith(".sh"):
        script = DOCKER / Path(program).name
        execs = re.findall(r"^\s*exec\s+(\S+)", script.read_text(encoding="utf-8"), re.M)
        assert execs, f"{script.name} ends by exec-ing the program"
        program = execs[-1]
    assert program in console_scripts(), f"{program} is a console script of setup.cfg"


def test_dockerignore_lets_in_what_the_images_copy() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "an allow-list"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    for name in DOCKERFILES:
        for stage in parse_dockerfile(DOCKER / name):
            for copy in stage.all("COPY"):
                if "--from=" in copy.args:
                    continue
                *sources, _destination = shlex.split(copy.args)
                for source in sources:
                    if source.startswith("--"):
                        continue
                    plain = source.rstrip("/").rstrip("*")
                    assert plain in allowed or plain.split("/")[0] in allowed, f"{name}: {source} is ignored"
                    if "*" not in source:
                        assert (ROOT / plain).exists(), f"{name}: {source} does not exist"


# --------------------------------------------------------------------------- compose


def compose_file() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose); compose not validated")
    return found


@pytest.mark.parametrize(
    "files",
    [["docker-compose.yml"], ["docker-compose.yml", "docker/compose.localstack.yml"]],
    ids=["moto", "localstack-override"],
)
def test_docker_compose_config_is_valid(files: list[str]) -> None:
    command = [docker_compose()]
    for name in files:
        command += ["-f", name]
    for profile in ([], ["--profile", "observability"]):
        result = subprocess.run(
            [*command, *profile, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr


def test_compose_services_run_as_non_root_on_a_read_only_root() -> None:
    services = compose_file()["services"]
    for name, service in services.items():
        user = str(service.get("user", ""))
        assert user and user.split(":")[0] not in {"0", "root"}, f"{name} runs as a non-root user"
        built = service.get("build", {}).get("dockerfile")
        if built in OUR_IMAGES or str(service.get("image", "")).startswith("data-egress/"):
            assert user == f"{UID}:{UID}", name
            assert service.get("read_only") is True, name
            assert any(str(t).split(":")[0] == "/tmp" for t in service.get("tmpfs", [])), name


def test_compose_worker_and_agent_share_the_data_volume() -> None:
    compose = compose_file()
    services = compose["services"]
    assert "data-egress" in compose["volumes"]
    for name in ("egress", "sft-agent"):
        mounts = [str(v) for v in services[name]["volumes"]]
        assert "data-egress:/data-egress" in mounts, name
    assert services["egress"]["environment"]["EGRESS_SFT_ROOT"] == "/data-egress"


def test_compose_start_order_waits_for_the_one_shot_jobs() -> None:
    services = compose_file()["services"]
    assert services["bootstrap"]["depends_on"]["aws"]["condition"] == "service_healthy"
    assert services["egress"]["depends_on"]["bootstrap"]["condition"] == "service_completed_successfully"
    assert services["receiver"]["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    assert services["sft-agent"]["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    assert services["sft-agent"]["depends_on"]["receiver"]["condition"] == "service_healthy"
    bootstrap = services["bootstrap"]["command"]
    assert bootstrap[:2] == ["local", "bootstrap"] and "http://aws:4566" in bootstrap
    assert services["certs"]["command"][0] == "dev-certs"
    assert services["aws"]["environment"]["MOTO_PORT"] == "4566"


def test_compose_agent_config_is_valid_for_the_agent() -> None:
    agent_settings = pytest.importorskip(
        "sft_agent.settings", reason="sft_agent.settings not in this tree yet"
    )
    agent = compose_file()["services"]["sft-agent"]
    mount = next(str(v) for v in agent["volumes"] if str(v).endswith(":/etc/sft-agent/config.yaml:ro"))

    settings = agent_settings.load_settings(config_file=ROOT / mount.split(":")[0], environ={})

    assert settings.metrics_port == int(agent["environment"]["SFT_AGENT_METRICS_PORT"])
    tls_dir = Path(agent["environment"]["SFT_TLS_DIR"])
    for route in settings.routes:
        assert route.source.is_relative_to("/data-egress"), route.name
        assert route.tls is not None and route.tls.client_cert.parent == tls_dir, (
            "where the entrypoint writes"
        )
        assert all(a.url.startswith("https://receiver:") for a in route.http_actions)


def test_compose_bind_mounts_exist() -> None:
    for name, service in compose_file()["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} is missing"


def test_observability_scrapes_and_charts_the_metrics() -> None:
    compose = compose_file()
    prometheus = yaml.safe_load((ROOT / "config" / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {
        target
        for job in prometheus["scrape_configs"]
        for sc in job["static_configs"]
        for target in sc["targets"]
    }
    agent_port = compose["services"]["sft-agent"]["environment"]["SFT_AGENT_METRICS_PORT"]
    assert targets == {"egress:9090", f"sft-agent:{agent_port}"}
    for name in ("prometheus", "grafana"):
        assert compose["services"][name]["profiles"] == ["observability"]

    dashboard = json.loads(
        (ROOT / "config" / "grafana" / "dashboards" / "data-egress.json").read_text(encoding="utf-8")
    )
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    used = set(re.findall(r"\b((?:egress|sft_agent)_[a-z_]+)\b", " ".join(exprs)))
    assert any(m.startswith("egress_") for m in used) and any(m.startswith("sft_agent_") for m in used)
    from prometheus_client.metrics_core import Metric

    from egress.metrics import REGISTRY

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    exported: set[str] = set()
    family: Metric
    for family in REGISTRY.collect():
        exported |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
    unknown = {m for m in used if m.startswith("egress_")} - exported
    assert not unknown, (
        f"the dashboard charts worker metrics that egress/metrics.py does not define: {unknown}"
    )


# --------------------------------------------------------------------------- container scripts


ENTRYPOINT = DOCKER / "sft-agent-entrypoint.sh"
CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
KEY = "-----BEGIN PRIVATE KEY-----\nSECRETKEYMATERIAL\n-----END PRIVATE KEY-----"


@pytest.fixture()
def fake_agent(tmp_path: Path) -> Path:
    """A stand-in ``sft-agent`` on PATH that records its arguments and environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "sft-agent"
    script.write_text(
        '#!/bin/sh\nprintf "%s\\n" "$@" > "$RECORD.args"\nenv > "$RECORD.env"\n', encoding="utf-8"
    )
    script.chmod(0o755)
    (tmp_path / "config.yaml").write_text("routes: []\n", encoding="utf-8")
    return tmp_path


def run_entrypoint(home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": f"{home / 'bin'}:{os.environ['PATH']}",
        "RECORD": str(home / "record"),
        "SFT_TLS_DIR": str(home / "tls"),
        "SFT_AGENT_CONFIG": str(home / "config.yaml"),
    }
    return subprocess.run(
        ["/bin/sh", str(ENTRYPOINT), "--extra"], env=base | env, capture_output=True, text=True, timeout=30
    )


def test_entrypoint_shell_syntax() -> None:
    text = ENTRYPOINT.read_text(encoding="utf-8")
    assert subprocess.run(["/bin/sh", "-n", str(ENTRYPOINT)], check=False).returncode == 0
    assert re.search(r"^set -eu", text, re.M)
    assert not re.search(r"^\s*set -[a-z]*x", text, re.M), "never trace: it would print the key"
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR


def test_entrypoint_places_pems_from_env_and_files_privately(fake_agent: Path) -> None:
    ca_file = fake_agent / "ca-mounted.pem"
    ca_file.write_text(CERT + "\n", encoding="utf-8")

    result = run_entrypoint(
        fake_agent, SFT_CLIENT_CERT_PEM=CERT, SFT_CLIENT_KEY_PEM=KEY, SFT_CA_BUNDLE_FILE=str(ca_file)
    )

    assert result.returncode == 0, result.stderr
    tls = fake_agent / "tls"
    assert (tls / "client.pem").read_text() == CERT + "\n"
    assert (tls / "client-key.pem").read_text() == KEY + "\n"
    assert (tls / "ca.pem").read_text() == CERT + "\n"
    for name in ("client.pem", "client-key.pem", "ca.pem"):
        assert stat.S_IMODE((tls / name).stat().st_mode) == 0o600, name
    args = (fake_agent / "record.args").read_text().splitlines()
    assert args == ["run", "--config", str(fake_agent / "config.yaml"), "--extra"]
    agent_env = (fake_agent / "record.env").read_text()
    assert "SECRETKEYMATERIAL" not in agent_env, "the PEM variables are unset before exec"
    assert "SECRETKEYMATERIAL" not in result.stdout + result.stderr
    assert not list(tls.glob("*.tmp*"))


def test_entrypoint_refuses_missing_or_malformed_material(fake_agent: Path) -> None:
    missing = run_entrypoint(fake_agent, SFT_CLIENT_CERT_PEM=CERT)
    assert missing.returncode == 1
    assert "no client key" in missing.stderr
    assert not (fake_agent / "record.args").exists()

    malformed = run_entrypoint(fake_agent, SFT_CLIENT_CERT_PEM=CERT, SFT_CLIENT_KEY_PEM="SECRETKEYMATERIAL")
    assert malformed.returncode == 1
    assert "does not hold a PEM block" in malformed.stderr
    assert "SECRETKEYMATERIAL" not in malformed.stdout + malformed.stderr


@pytest.fixture()
def probe_server() -> Iterator[tuple[int, dict[str, int]]]:
    status = {"code": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(status["code"] if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1]), status
    server.shutdown()
    server.server_close()


def healthcheck(*args: str, env: dict[str, str] | None = None) -> int:
    return subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py"), *args],
        env=(env or {}) | {"PATH": os.environ["PATH"]},
        capture_output=True,
        timeout=30,
    ).returncode


def test_healthcheck_script(probe_server: tuple[int, dict[str, int]]) -> None:
    port, status = probe_server
    assert healthcheck("http", "/healthz", "--port-env", "P", "--port", "1", env={"P": str(port)}) == 0
    status["code"] = 503
    assert healthcheck("http", "/healthz", "--port", str(port)) == 1
    assert healthcheck("tcp", "--port", str(port)) == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert healthcheck("tcp", "--port", str(closed)) == 1
