"""Real containers for the tests: rootful podman, a Debian base image, the daskmask image.

No container registry is reachable from these machines, so the base image is
made with ``debootstrap`` from the Debian mirror apt already uses, and the
daskmask image is built FROM it with ``deploy/kubernetes/Containerfile`` and a
wheel built from this checkout. Each is made once and cached by tag: the base
by its fixed tag, the daskmask image by a hash of what goes into it (the
Containerfile, the lock file, pyproject.toml and the wheel's contents; the
Containerfile installs the dependencies in a layer of their own, so that podman
reuses it when only daskmask's code changed). Podman's settings for
these machines go to a ``containers.conf`` in a temporary folder, named by
``CONTAINERS_CONF``: nothing under /etc is changed.

Where podman cannot run (not root), or cannot be installed, the fixtures FAIL
with the command that installs it: the container tests never skip silently.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
CONTAINERFILE = REPOSITORY / "deploy" / "kubernetes" / "Containerfile"
LOCK_FILE = REPOSITORY / "requirements" / "lock.txt"
PYPROJECT = REPOSITORY / "pyproject.toml"

#: Debian packages podman needs here (rootful, runc, netavark) and debootstrap for the base.
PODMAN_PACKAGES = (
    "podman runc crun conmon catatonit fuse-overlayfs netavark aardvark-dns "
    "golang-github-containers-common iptables debootstrap"
)
PODMAN_INSTALL = (
    "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
    f"--no-install-recommends {PODMAN_PACKAGES}"
)

#: The base image, made from the Debian mirror with debootstrap (no registry is reachable).
BASE_IMAGE = "localhost/debian-base:bookworm"
#: Name of the daskmask image; the tag is a hash of its inputs.
IMAGE_NAME = "localhost/daskmask"

#: Two changes to podman's defaults these machines need: crun fails on their hybrid
#: cgroups ("cgroups in hybrid mode not supported"), and the default rlimits cannot be
#: raised without CAP_SYS_RESOURCE ("setrlimit RLIMIT_NOFILE: Operation not permitted").
#: No systemd: cgroupfs and a file events log.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""

#: The host's CA bundle: PyPI traffic from these machines passes a proxy whose CA the
#: host trusts, so pip inside the build gets this bundle, mounted for the build only.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass
class Podman:
    """Runs podman with this session's containers.conf; records how long steps took."""

    environment: dict[str, str]
    durations: dict[str, float] = field(default_factory=dict)

    def run(
        self, *args: str, check: bool = True, timeout: float = 600, **kwargs
    ) -> subprocess.CompletedProcess:
        """Run ``podman ARGS``; on failure raise with podman's own output."""
        result = subprocess.run(
            ["podman", *args],
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"podman {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def image_exists(self, reference: str) -> bool:
        """Whether the local store holds this image."""
        return self.run("image", "exists", reference, check=False).returncode == 0

    def timed(self, step: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """Run podman and record the wall time of the step under ``step``."""
        start = time.perf_counter()
        try:
            return self.run(*args, **kwargs)
        finally:
            self.durations[step] = time.perf_counter() - start


def _fail_without_podman(reason: str) -> None:
    pytest.fail(
        f"{reason}. The container tests need rootful podman and debootstrap; as root, "
        f"install them with:\n  {PODMAN_INSTALL}",
        pytrace=False,
    )


def ensure_podman_installed() -> None:
    """Install podman and debootstrap with apt-get if they are missing (as root)."""
    if os.geteuid() != 0:
        _fail_without_podman("Not root: rootful podman and debootstrap need root")
    if shutil.which("podman") and shutil.which("debootstrap") and shutil.which("runc"):
        return
    if shutil.which("apt-get") is None:
        _fail_without_podman("podman is missing and there is no apt-get to install it")
    result = subprocess.run(
        ["sh", "-c", PODMAN_INSTALL],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0 or shutil.which("podman") is None:
        _fail_without_podman(f"Installing podman failed:\n{result.stderr[-3000:]}")


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (the base image takes the same one)."""
    sources = [Path("/etc/apt/sources.list")]
    folder = Path("/etc/apt/sources.list.d")
    if folder.is_dir():
        sources += sorted(folder.glob("*.list")) + sorted(folder.glob("*.sources"))
    for source in sources:
        if not source.is_file():
            continue
        text = source.read_text()
        # deb822 (.sources: "URIs: ...") or one-line ("deb URL bookworm main") form;
        # the security archive and third-party repositories are not the mirror.
        for match in re.finditer(r"^(?:URIs:|deb)\s+(\S+)(?:\s+(\S+))?", text, re.MULTILINE):
            url = match.group(1)
            if "/debian" in url and "security" not in url:
                return url.rstrip("/")
    return "http://deb.debian.org/debian"


@pytest.fixture(scope="session")
def podman(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Podman]:
    """Rootful podman with these machines' settings (installed if missing).

    At the end of the session it prints how long each step took (image builds,
    kube play, ...), past pytest's output capture.
    """
    ensure_podman_installed()
    folder = tmp_path_factory.mktemp("podman")
    conf = folder / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    engine = Podman({**os.environ, "CONTAINERS_CONF": str(conf)})
    info = engine.run("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False)
    if info.returncode != 0:
        _fail_without_podman(f"podman info failed: {info.stderr.strip()[-2000:]}")
    yield engine
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if engine.durations and reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                "\npodman durations: "
                + ", ".join(f"{step} {s:.1f} s" for step, s in engine.durations.items())
            )


def run_step(
    command: list[str], what: str, environment: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run one step of making an image; on failure raise with the end of its output."""
    result = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
            f"{result.stderr[-3000:]}"
        )
    return result


@pytest.fixture(scope="session")
def base_image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A minimal Debian bookworm image made with debootstrap (once per machine)."""
    if podman.image_exists(BASE_IMAGE):
        return BASE_IMAGE
    rootfs = tmp_path_factory.mktemp("rootfs")
    mirror = debian_mirror()
    start = time.perf_counter()
    run_step(
        ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror],
        f"debootstrap from {mirror}",
    )
    # apt inside the image uses the same mirror as the host (the only one reachable).
    (rootfs / "etc" / "apt" / "sources.list").write_text(
        f"deb {mirror} bookworm main\ndeb {mirror} bookworm-updates main\n"
    )
    archive = subprocess.Popen(
        ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE
    )
    podman.run("import", "--change", 'CMD ["/bin/bash"]', "-", BASE_IMAGE, stdin=archive.stdout)
    archive.wait(timeout=60)
    podman.durations["base image (debootstrap + import)"] = time.perf_counter() - start
    shutil.rmtree(rootfs, ignore_errors=True)
    return BASE_IMAGE


def build_wheel(destination: Path) -> Path:
    """Build daskmask's wheel from a copy of the checkout (the tree stays clean)."""
    source = destination.parent / "daskmask-source"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPOSITORY / name).exists():
            shutil.copy2(REPOSITORY / name, source / name)
    shutil.copytree(
        REPOSITORY / "daskmask",
        source / "daskmask",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    run_step(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(source), "-w", destination],
        "pip wheel of daskmask",
        # Zip entries carry this time instead of the files' times: the same sources
        # give the same wheel, and so the same image tag.
        environment={**os.environ, "SOURCE_DATE_EPOCH": "315532800"},
    )
    (wheel,) = destination.glob("daskmask-*.whl")
    return wheel


def _wheel_digest(wheel: Path, digest: hashlib._Hash) -> None:
    """Feed the wheel's member names and contents (not its zip metadata) to ``digest``."""
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            digest.update(name.encode())
            digest.update(archive.read(name))


@pytest.fixture(scope="session")
def daskmask_image(
    podman: Podman, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The image of deploy/kubernetes/Containerfile, built once per content hash."""
    context = tmp_path_factory.mktemp("image-context")
    start = time.perf_counter()
    wheel = build_wheel(context)
    podman.durations["daskmask wheel"] = time.perf_counter() - start
    shutil.copy2(CONTAINERFILE, context / "Containerfile")
    shutil.copy2(LOCK_FILE, context / "lock.txt")
    shutil.copy2(PYPROJECT, context / "pyproject.toml")
    digest = hashlib.sha256()
    for path in (CONTAINERFILE, LOCK_FILE, PYPROJECT):
        digest.update(path.read_bytes())
    digest.update(base_image.encode())
    _wheel_digest(wheel, digest)
    image = f"{IMAGE_NAME}:{digest.hexdigest()[:16]}"
    if podman.image_exists(image):
        return image
    podman.timed(
        "daskmask image build",
        "build",
        "--network=host",
        "--pull=never",
        "--build-arg",
        f"BASE_IMAGE={base_image}",
        "--build-arg",
        f"WHEEL={wheel.name}",
        # The host's CA bundle, for pip, during the build only: nothing is baked in.
        "-v",
        f"{HOST_CA_BUNDLE}:/run/host-ca.crt:ro",
        "--build-arg",
        "PIP_CERT=/run/host-ca.crt",
        "-f",
        str(context / "Containerfile"),
        "-t",
        image,
        str(context),
        timeout=1800,
    )
    # One tagged image is enough: drop older builds (their shared layers stay, for reuse).
    listed = podman.run("images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_NAME)
    for old in set(listed.stdout.split()) - {image}:
        podman.run("rmi", old, check=False)
    return image
