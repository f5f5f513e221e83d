"""The container image, without a Docker engine: the Dockerfile's inputs exist, its
final stage takes only the code, and every process starts from exactly the files the
image holds, with the image's environment, as the image's non-root user.

What this can't check: the dependency install in the builder stage (the processes run
on this repository's .venv, which has every runtime dependency), and the base image.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.procs import MeshProcess, launch
from tests.deploy import dockerfile
from tests.deploy.dockerfile import ROOT

STAGES = dockerfile.parse()
FINAL = STAGES[-1]
IGNORE = dockerfile.DockerIgnore.read()
IMAGE_FILES = dockerfile.image_files(FINAL, IGNORE)
SERVICES = ("user", "product", "order", "notification", "payment")
# The image's venv and data directory, as the Dockerfile names them.
IMAGE_VENV = "/opt/venv"
IMAGE_DATA_DIR = "/var/lib/shop"


# -- the Dockerfile's inputs and settings ------------------------------------------


def test_every_path_copied_from_the_context_exists_and_is_not_ignored() -> None:
    sources = [
        source
        for stage in STAGES
        for copy in stage.copies()
        if copy.from_stage is None
        for source in copy.sources
    ]
    assert sources, "the Dockerfile copies nothing from the build context"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
        assert dockerfile.context_files(source, IGNORE), (
            f"COPY {source}: .dockerignore leaves nothing of it in the build context"
        )


def test_the_final_stage_takes_the_code_and_the_venv_only() -> None:
    from_context = {
        (source.rstrip("/"), copy.destination.rstrip("/"))
        for copy in FINAL.copies()
        if copy.from_stage is None
        for source in copy.sources
    }
    assert from_context == {
        ("services", "/app/services"),
        ("gateway", "/app/gateway"),
        ("gen", "/app/gen"),
    }
    from_stages = [c for c in FINAL.copies() if c.from_stage is not None]
    assert [(c.from_stage, c.sources, c.destination) for c in from_stages] == [
        (STAGES[0].name, (IMAGE_VENV,), IMAGE_VENV)
    ]
    # The Alembic migrations travel with services/.
    for name in SERVICES:
        assert f"/app/services/{name}/migrations/env.py" in IMAGE_FILES
        assert any(
            path.startswith(f"/app/services/{name}/migrations/versions/") for path in IMAGE_FILES
        )
    # Generated code: both top-level packages, and no caches or local databases.
    assert "/app/gen/shop/__init__.py" in IMAGE_FILES
    assert "/app/gen/buf/__init__.py" in IMAGE_FILES
    assert not [p for p in IMAGE_FILES if "__pycache__" in p or p.endswith((".pyc", ".db"))]


def test_image_settings() -> None:
    assert [stage.base for stage in STAGES] == ["python:3.11-slim-bookworm"] * 2
    env = FINAL.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["DATA_DIR"] == IMAGE_DATA_DIR
    assert env["PATH"].split(":")[0] == f"{IMAGE_VENV}/bin"
    assert env["PYTHONPATH"].split(":") == [FINAL.workdir, f"{FINAL.workdir}/gen"]
    # A numeric, non-root user and group.
    user = FINAL.user
    assert user is not None and re.fullmatch(r"\d+:\d+", user), user
    assert all(int(part) >= 1000 for part in user.split(":"))
    # No secrets baked in.
    for key in env:
        assert not re.search(r"SECRET|PASSWORD|TOKEN|DATABASE_URL|BROKER_URL|JWKS", key), key
    # No compiler or build tools in the final stage.
    final_runs = " ".join(i.args for i in FINAL.all("RUN"))
    for tool in ("apt-get", "apk", "gcc", "g++", "clang", "build-essential", "pip install"):
        assert tool not in final_runs, f"the final stage runs {tool}"


def test_the_builder_installs_the_runtime_dependencies_from_the_lock() -> None:
    builder = STAGES[0]
    run = " ".join(i.args for i in builder.all("RUN"))
    assert "['project']['dependencies']" in run  # not the dev or bench extras
    assert "--constraint requirements.lock" in run
    assert f"venv --without-pip {IMAGE_VENV}" in run
    assert "--only-binary=:all:" in run
    assert ".[" not in run and " -e " not in run  # the project itself is not installed
    assert {path.rsplit("/", 1)[-1] for path in dockerfile.image_files(builder, IGNORE)} == {
        "pyproject.toml",
        "requirements.lock",
    }


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "var/user.db",
        "var/dev-pki/ca-key.pem",
        "var/dev-keys/private.pem",
        "tests/conftest.py",
        "bench/results/2026.json",
        "bench/run.py",
        "node_modules/x/index.js",
        "web/node_modules/x/index.js",
        ".pytest_cache/v/cache",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        "services/user/__pycache__/server.cpython-311.pyc",
        "gateway/app.pyc",
        "services/user.db",
        "deploy/k8s/overlays/dev/dev-keys/private.pem",
        "scripts/run_mesh.py",
        "proto/shop/user/v1/user.proto",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert IGNORE.ignores(path)


# -- every process starts from the image's files -----------------------------------


@dataclass
class ImageCopy:
    """The image's files under `app` (its WORKDIR), a venv at `venv` standing in for
    /opt/venv, and the image's environment with its paths moved to those."""

    app: Path
    venv: Path
    uid: int
    gid: int

    def environment(self, data_dir: Path) -> dict[str, str]:
        moves = {
            FINAL.workdir: str(self.app),
            IMAGE_VENV: str(self.venv),
            IMAGE_DATA_DIR: str(data_dir),
        }

        def move(value: str) -> str:
            parts = []
            for part in value.split(":"):
                for image_path, here in moves.items():
                    if part == image_path or part.startswith(image_path + "/"):
                        part = here + part[len(image_path) :]
                parts.append(part)
            return ":".join(parts)

        # Only the image's variables: nothing of this test's environment leaks in.
        env = {key: move(value) for key, value in FINAL.env().items()}
        # HOME as Docker sets it for the Dockerfile's user (useradd --home-dir /nonexistent).
        env["HOME"] = "/nonexistent"
        return env


@pytest.fixture(scope="module")
def image_copy() -> Iterator[ImageCopy]:
    if os.geteuid() != 0:
        pytest.skip("switching to the image's user needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    uid, gid = (int(part) for part in (FINAL.user or "").split(":"))
    with tempfile.TemporaryDirectory(prefix="shop-image-") as tmp:
        top = Path(tmp)
        top.chmod(0o755)  # like the image's /: readable by everyone, writable by root
        app = top / "app"
        for image_path, relative in IMAGE_FILES.items():
            target = app / Path(image_path).relative_to(FINAL.workdir)
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            shutil.copyfile(ROOT / relative, target)
            target.chmod(0o644)
        for directory in [app, *(p for p in app.rglob("*") if p.is_dir())]:
            directory.chmod(0o755)
        # A venv with this repository's installed dependencies but not the editable
        # install's paths (/work/main, /work/main/gen): like /opt/venv, it holds the
        # dependencies only, so the code can come from nowhere but the copy. A .pth line
        # adds .venv's site-packages; the .pth files inside it are not processed.
        venv = top / "venv"
        made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
        assert made == 0
        site = Path(sysconfig.get_paths()["purelib"])
        purelib = (
            venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
        )
        (purelib / "shop-dependencies.pth").write_text(f"{site}\n")
        copy = ImageCopy(app, venv, uid, gid)
        # The precondition of everything below: the project is not importable from the
        # venv alone.
        probe = _run([str(venv / "bin" / "python"), "-c", "import services"], cwd=top)
        assert probe != 0, "the stand-in venv still sees the repository's code"
        yield copy


def _run(argv: list[str], cwd: Path | None = None) -> int:
    import subprocess

    return subprocess.run(argv, cwd=cwd, capture_output=True, timeout=60, check=False).returncode


def _as_user(uid: int, gid: int) -> list[str]:
    """setpriv to the image's user. One capability is kept, DAC_READ_SEARCH (read and
    search only, never write): the test machine's interpreter lives under /root (mode
    0700), where the image's user could not otherwise read it. Writes are still those
    of the unprivileged user, and no_new_privs matches allowPrivilegeEscalation: false."""
    caps = "-all,+dac_read_search"
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        f"--inh-caps={caps}",
        f"--ambient-caps={caps}",
        f"--bounding-set={caps}",
        "--no-new-privs",
    ]


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for the signal (SigCgt in /proc/<pid>/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M)
    assert match, status
    return bool(int(match.group(1), 16) & (1 << (signum - 1)))


async def _until_it_catches(pid: int, signum: int, timeout: float) -> None:
    for _ in range(int(timeout / 0.02)):
        if await asyncio.to_thread(_catches, pid, signum):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the process never installed a handler for signal {signum}")


def _group_alive(pgid: int, signum: int = 0) -> bool:
    """Whether any process of the group is left (and sends it `signum`)."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


@asynccontextmanager
async def image_process(
    copy: ImageCopy, module: str, data_dir: Path, start_timeout: float = 60.0
) -> AsyncIterator[MeshProcess]:
    """`python -m <module>` as the image runs it: from the copy's WORKDIR, with the image's
    environment and user, on 127.0.0.1 port 0, in a process group of its own so that
    nothing outlives the test, whatever happens."""
    env = {
        **copy.environment(data_dir),
        "HOST": "127.0.0.1",
        "PORT": "0",
        # Free ports for the side listeners too, so parallel runs never collide.
        "METRICS_PORT": "0",
        "HEALTH_PORT": "0",
    }
    running = await launch(
        # "python" is found on the image's PATH: the venv's interpreter. (setpriv's
        # change of user would clear a parent-death signal: the group is killed instead.)
        [*_as_user(copy.uid, copy.gid), "python", "-m", module],
        name=module,
        env=env,
        inherit_env=False,
        cwd=copy.app,
        die_with_parent=False,
        new_session=True,
        start_timeout=start_timeout,
    )
    try:
        # The services print the listen line a moment before they install their SIGTERM
        # handler: wait for the handler, so that SIGTERM tests the graceful stop rather
        # than that race (which the default action, death by SIGTERM, would lose).
        await _until_it_catches(running.process.pid, signal.SIGTERM, start_timeout)
        yield running
    finally:
        _group_alive(running.process.pid, signal.SIGKILL)  # whatever is left, after a failure
        await running.close()


def _files(top: Path) -> set[str]:
    return {p.relative_to(top).as_posix() for p in top.rglob("*")}


@pytest.fixture
def data_dir(image_copy: ImageCopy) -> Iterator[Path]:
    """An empty DATA_DIR that only the image's user can write (the emptyDir in Kubernetes)."""
    with tempfile.TemporaryDirectory(prefix="shop-image-data-") as tmp:
        Path(tmp).chmod(0o755)
        data = Path(tmp) / "data"
        data.mkdir(mode=0o700)
        os.chown(data, image_copy.uid, image_copy.gid)
        yield data


@pytest.mark.parametrize("module", [*(f"services.{name}" for name in SERVICES), "gateway"])
async def test_process_runs_from_the_image_files_as_the_image_user(
    image_copy: ImageCopy, data_dir: Path, module: str
) -> None:
    name = module.removeprefix("services.")
    code_before = _files(image_copy.app)
    async with image_process(image_copy, module, data_dir) as running:
        listening = running.listening
        assert listening["service"] == name
        match = re.fullmatch(r"127\.0\.0\.1:(\d+)", listening["listening"])
        assert match, listening
        port = int(match.group(1))
        assert port > 0
        # It runs as the image's user...
        status = await asyncio.to_thread(Path(f"/proc/{running.process.pid}/status").read_text)
        assert re.search(rf"^Uid:\s+{image_copy.uid}\s", status, re.M), status
        assert re.search(rf"^Gid:\s+{image_copy.gid}\s", status, re.M), status
        # ...and really listens there.
        if module == "gateway":
            # /openapi.json reads gen/shop/comments.json; /docs, the installed Swagger UI.
            for path in ("/healthz", "/openapi.json", "/docs"):
                assert await asyncio.to_thread(_get, f"http://127.0.0.1:{port}{path}") == 200
        else:
            await asyncio.to_thread(_connects, port)
        returncode = await running.stop(grace=20.0)
        assert not running.killed, f"no exit 20 s after SIGTERM:\n{running.tail()}"
        assert not _group_alive(running.process.pid), "a process outlived the SIGTERM"
    assert returncode == 0, running.tail()
    # Its development keys and PKI (no TLS_MODE=plaintext, no key files given) and, for
    # a service, its SQLite file: all under DATA_DIR, owned by the image's user.
    made = _files(data_dir)
    assert {"dev-keys/jwks.json", "dev-pki/ca.pem", f"dev-pki/{name}.pem"} <= made, made
    if module != "gateway":
        assert f"{name}.db" in made, made
    assert _owner(data_dir / "dev-pki" / "ca.pem") == image_copy.uid
    # Nothing was written next to the code (no bytecode caches, nothing else).
    assert _files(image_copy.app) == code_before


def _owner(path: Path) -> int:
    return path.stat().st_uid


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        status: int = response.status
        return status


def _connects(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        pass
