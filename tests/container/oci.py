"""Build and run this project's OCI image without a Docker engine or a registry: buildah + podman.

Used by the container tests; nothing here is part of the image. All image and container state
lives in one store outside the repository, ``CONTAINER_STATE_DIR`` (default
``/var/tmp/credit-risk-service/containers``), shared by buildah and podman through
``CONTAINERS_STORAGE_CONF``, so the base image and the build cache survive between runs.

BentoML's generated Dockerfile starts ``FROM python:3.11-slim``. Where no registry can be reached,
``ensure_base_image`` builds a stand-in with debootstrap (Debian bookworm's Python 3.11) and tags it
``docker.io/library/python:3.11-slim`` in that store, so the bentofile stays the standard one. A
real ``python:3.11-slim`` already in the store (``podman pull`` it where a registry is reachable)
is used as it is.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BASE_IMAGE = "docker.io/library/python:3.11-slim"
DEBIAN_SUITE = "bookworm"  # its python3 is 3.11, the version requirements/runtime.txt is locked for
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
# The host's CA bundle, copied into the stand-in: egress here may re-sign TLS, and uv (inside the
# build) trusts only SSL_CERT_FILE or its own bundled roots.
HOST_CA_BUNDLE = Path(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"))
STAND_IN_LABEL = "credit-risk-service.stand-in-recipe"
TEST_LABEL = "credit-risk-service.test"
TOOLS = ("buildah", "podman", "runc", "debootstrap")
BENTO_USER_UID = 1034  # the `bentoml` user of BentoML's generated Dockerfile

_NOT_BUILD_INPUT = shutil.ignore_patterns(
    ".git", ".venv", "var", "__pycache__", ".*_cache", "*.egg-info", "*.bento"
)

# What `podman run` needs on this kind of machine (a VM without systemd or a container engine):
# runc rather than crun, rlimits it may set, and host networking (no CNI/netavark bridge here).
PODMAN_RUN_FLAGS = (
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
    "--network",
    "host",
    "--log-driver",
    "k8s-file",
)


def default_state_dir() -> Path:
    # Not under a hidden directory (~/.cache): `bentoml build` refuses paths with one.
    return Path(os.environ.get("CONTAINER_STATE_DIR", "/var/tmp/credit-risk-service/containers"))


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _storage_driver(state_dir: Path) -> str:
    """overlay where the kernel offers it on this file system (fast, layers share files), else vfs
    (a full copy per layer: always works, slow and large)."""
    if configured := os.environ.get("CONTAINER_STORAGE_DRIVER"):
        return configured
    with open("/proc/filesystems") as filesystems:
        has_overlay = any(line.split()[-1] == "overlay" for line in filesystems if line.strip())
    fs_type = subprocess.run(
        ["stat", "-f", "-c", "%T", str(state_dir)], capture_output=True, text=True, check=True
    ).stdout.strip()
    return "overlay" if has_overlay and fs_type not in {"overlayfs", "tmpfs"} else "vfs"


def _run(
    cmd: Sequence[str], env: Mapping[str, str], timeout: float, log: Path | None = None
) -> str:
    """Run a command; its stdout. On failure raise with its output (or the log file's tail).

    The command gets its own process group, killed whole if we are interrupted or it times out:
    `bentoml containerize` leaves a `buildah build` child that would otherwise run on.
    """
    with log.open("w") if log is not None else nullcontext() as log_file:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=log_file or subprocess.PIPE,
            stderr=subprocess.STDOUT if log_file else subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if proc.returncode != 0:
        output = log.read_text(errors="replace")[-6000:] if log else stdout + stderr
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{output}")
    return stdout or ""


@dataclass
class Oci:
    """buildah and podman pointed at one store in ``state_dir``."""

    state_dir: Path = field(default_factory=default_state_dir)

    def __post_init__(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.driver = _storage_driver(self.state_dir)
        # One store per driver: a store cannot change driver once it holds images.
        conf = self.state_dir / f"storage-{self.driver}.conf"
        # Run state in /run, one per store, short: podman's exit hook (`podman container
        # cleanup`) refuses a runroot longer than 50 characters, and `podman wait` then hangs
        # 20 s on every exit.
        store_id = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:8]
        runroot = Path("/run/credit-risk-service") / f"{store_id}-{self.driver}"
        conf.write_text(
            "[storage]\n"
            f'driver = "{self.driver}"\n'
            f'graphroot = "{self.state_dir / self.driver / "storage"}"\n'
            f'runroot = "{runroot}"\n'
        )
        self.env = {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": str(conf),
            # No user namespaces or nested containers needed for RUN steps.
            "BUILDAH_ISOLATION": "chroot",
            # Cache each Dockerfile step: a rebuild after a code change reuses the apt and
            # pip layers. With vfs every cached layer is a full copy, so only with overlay.
            "BUILDAH_LAYERS": "true" if self.driver == "overlay" else "false",
        }
        self.logs = self.state_dir / "logs"
        self.logs.mkdir(exist_ok=True)

    def podman(self, *args: str, timeout: float = 120) -> str:
        return _run(["podman", *args], self.env, timeout)

    def image_exists(self, image: str) -> bool:
        return subprocess.run(["podman", "image", "exists", image], env=self.env).returncode == 0

    def image_label(self, image: str, label: str) -> str | None:
        """The image's label value; None when the image is absent."""
        if not self.image_exists(image):
            return None
        template = f'{{{{index .Labels "{label}"}}}}'
        return self.podman("image", "inspect", "--format", template, image).strip()

    # -- the base image -------------------------------------------------------------------------

    def ensure_base_image(self) -> str:
        """Make ``python:3.11-slim`` resolvable locally; build the stand-in only when needed."""
        recipe = _stand_in_recipe()
        label = self.image_label(BASE_IMAGE, STAND_IN_LABEL)
        if label is not None and label in {"", "<no value>", recipe}:
            return BASE_IMAGE  # the real image (no label) or our current stand-in
        with tempfile.TemporaryDirectory(dir=self.state_dir, prefix="rootfs-") as tmp:
            rootfs, archive = Path(tmp) / "rootfs", Path(tmp) / "rootfs.tar"
            _run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    DEBIAN_SUITE,
                    str(rootfs),
                    DEBIAN_MIRROR,
                ],
                self.env,
                timeout=900,
                log=self.logs / "debootstrap.log",
            )
            _make_python_slim_like(rootfs)
            _run(
                [
                    "tar",
                    "--numeric-owner",
                    "--exclude=./dev/*",
                    "--exclude=./proc/*",
                    "--exclude=./sys/*",
                    "-C",
                    str(rootfs),
                    "-cf",
                    str(archive),
                    ".",
                ],
                self.env,
                timeout=300,
            )
            self.podman(
                "import",
                "--change",
                "ENV=LANG=C.UTF-8",
                "--change",
                "ENV=SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
                "--change",
                f"LABEL={STAND_IN_LABEL}={recipe}",
                "--change",
                'CMD=["python3"]',
                str(archive),
                BASE_IMAGE,
                timeout=300,
            )
        return BASE_IMAGE

    # -- the project's image --------------------------------------------------------------------

    @contextmanager
    def build_context(self, project: Path) -> Iterator[Path]:
        """A copy of the project at one fixed path, held under a lock while in use.

        BentoML names the setup script in the generated Dockerfile after a hash of its absolute
        path, so bentos built from two checkouts (a worktree, CI's fresh clone) share no build
        cache. Built from this copy, they do.
        """
        context = self.state_dir / "build-context"
        with (self.state_dir / "build.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            shutil.rmtree(context, ignore_errors=True)
            shutil.copytree(project, context, ignore=_NOT_BUILD_INPUT)
            yield context

    def containerize(self, bento: str, bentoml: Path, options: Sequence[str] = ()) -> None:
        """``bentoml containerize --backend buildah [OPTIONS] BENTO``: image
        ``localhost/NAME:VERSION``."""
        self.ensure_base_image()
        _run(
            [str(bentoml), "containerize", "--backend", "buildah", *options, bento],
            {**self.env, "BENTOML_DO_NOT_TRACK": "true"},
            timeout=1800,
            log=self.logs / "containerize.log",
        )

    def remove_other_images(self, keep: str) -> None:
        """Drop the project's images other than ``keep``: the store holds one image (and the
        build cache under it) however many times the tests run."""
        repository = keep.rsplit(":", 1)[0]
        listed = self.podman("images", "--format", "{{.Repository}}:{{.Tag}}", repository)
        for stale in (name for name in listed.split() if name != keep):
            # Not fatal: an image another run is using right now is refused, and stays.
            subprocess.run(["podman", "rmi", stale], env=self.env, capture_output=True)

    def remove_leftovers(self, build_age_seconds: float = 3600) -> None:
        """What interrupted earlier runs left in the store: stopped test containers, and buildah
        working containers (each holds a mounted copy of a layer) older than any build takes.
        Running containers and recent builds may be another run's: they stay."""
        listed = json.loads(self.podman("ps", "--all", "--external", "--format", "json") or "[]")
        now = time.time()
        tests = [
            c["Id"]
            for c in listed
            if TEST_LABEL in (c.get("Labels") or {}) and c["State"] in {"exited", "created"}
        ]
        builds = [
            c["Id"]
            for c in listed
            if c["State"] == "storage" and now - c["Created"] > build_age_seconds
        ]
        if tests:
            self.podman("rm", *tests)
        if builds:
            _run(["buildah", "rm", *builds], self.env, timeout=300)


def _stand_in_recipe() -> str:
    """Changes when the stand-in's recipe does, so a stale stand-in is rebuilt."""
    recipe = f"{DEBIAN_SUITE} {DEBIAN_MIRROR} {BASE_PACKAGES} v1"
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def _make_python_slim_like(rootfs: Path) -> None:
    """Shape Debian's Python like the official image where BentoML's Dockerfile depends on it."""
    version = sorted(p.name for p in (rootfs / "usr/lib").glob("python3.*"))
    if "python3.11" not in version:
        raise RuntimeError(f"{DEBIAN_SUITE} ships {version}, the lock needs python3.11")
    # The official image's Python is its own, not Debian's: `pip install uv` (a Dockerfile step)
    # works there without PEP 668's "externally managed" refusal.
    for marker in (rootfs / "usr/lib").glob("python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    (rootfs / "usr/local/bin/python").symlink_to("/usr/bin/python3")
    shutil.copyfile(HOST_CA_BUNDLE, rootfs / "usr/local/share/ca-certificates/build-host.crt")
    subprocess.run(
        ["chroot", str(rootfs), "update-ca-certificates"], check=True, capture_output=True
    )
    for path in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (rootfs / path).glob("*"):
            if entry.is_file():
                entry.unlink()
    (rootfs / "etc/resolv.conf").unlink(missing_ok=True)
    (rootfs / "etc/hostname").unlink(missing_ok=True)


# -- running the image --------------------------------------------------------------------------


class Container:
    """One ``podman run -d`` of an image with the entrypoint and command it ships.

    ``data_dir`` is the host directory mounted as the image's data volume (``/data``); ports are
    chosen by the caller and passed as environment, as with ``docker run -e``; ``run_flags`` are
    further ``podman run`` options (``--read-only``...). ``stop()`` sends
    SIGTERM to the container's main process (what ``docker stop`` and Kubernetes do) and returns
    its exit code. ``remove()`` is safe to call whatever happened.
    """

    def __init__(
        self,
        oci: Oci,
        image: str,
        *,
        data_dir: Path,
        http_port: int,
        grpc_port: int,
        env: Mapping[str, str] | None = None,
        run_flags: Sequence[str] = (),
    ) -> None:
        self.oci = oci
        self.run_flags = tuple(run_flags)
        self.image = image
        self.data_dir = data_dir
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.url = f"http://127.0.0.1:{http_port}"
        self.grpc_target = f"127.0.0.1:{grpc_port}"
        self.name = f"crs-test-{uuid.uuid4().hex[:10]}"
        self.env = {"PORT": str(http_port), "GRPC_PORT": str(grpc_port), **(env or {})}
        self.exit_code: int | None = None

    def start(self, timeout: float = 180.0) -> Container:
        env_flags = [arg for name, value in self.env.items() for arg in ("-e", f"{name}={value}")]
        self.oci.podman(
            "run",
            "-d",
            "--name",
            self.name,
            "--label",
            f"{TEST_LABEL}=1",
            *PODMAN_RUN_FLAGS,
            "-v",
            f"{self.data_dir}:/data",
            *self.run_flags,
            *env_flags,
            self.image,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"container exited before ready:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"container not ready in {timeout}s:\n{self.logs()}")

    def running(self) -> bool:
        state = self.oci.podman("inspect", "--format", "{{.State.Running}}", self.name)
        return state.strip() == "true"

    def exec(self, *cmd: str) -> str:
        """Run a command inside the container (as the image's user); its stdout."""
        return self.oci.podman("exec", self.name, *cmd)

    def processes(self) -> list[tuple[str, str]]:
        """(user, command) of every process in the container."""
        out = self.oci.podman("top", self.name, "user", "args")
        rows = [line.split(None, 1) for line in out.splitlines()[1:] if line.strip()]
        return [(row[0], row[1] if len(row) > 1 else "") for row in rows]

    def logs(self) -> str:
        """What the container wrote to stdout and stderr, interleaved."""
        return subprocess.run(
            ["podman", "logs", self.name],
            env=self.oci.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
        ).stdout

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM the main process, wait for it to exit; its exit code (137: killed)."""
        self.oci.podman("kill", "--signal", "TERM", self.name)
        try:
            self.exit_code = int(self.oci.podman("wait", self.name, timeout=timeout).strip())
        except subprocess.TimeoutExpired:
            self.oci.podman("kill", self.name)
            self.exit_code = int(self.oci.podman("wait", self.name).strip())
        return self.exit_code

    def remove(self) -> None:
        subprocess.run(
            ["podman", "rm", "--force", "--time", "0", self.name],
            env=self.oci.env,
            capture_output=True,
            timeout=120,
        )


StartContainer = Callable[..., Container]
