"""The S3 servers the object-storage benchmarks run against, started as processes of their own.

Two real S3 servers on 127.0.0.1, over HTTP, each outside the measured process
tree:

``moto``
    moto's server mode (``moto[server]``, in the virtualenv). It keeps objects
    in memory and reads the *whole* object for every ranged GET (its
    ``_handle_range_header`` slices the object's full value), so a ranged read
    of a 2.2 GB object costs a 2.2 GB read whatever its length; its server
    also takes a core while it serves.
``s3rver``
    the npm package ``s3rver`` (3.7.1, Node.js): objects are files on disk and
    a ranged GET reads only its range (``fs.createReadStream`` with ``start``
    and ``end``), as on S3. It is installed outside the repository on first
    use, like the Slurm fixture installs Slurm: :data:`INSTALL_COMMAND`
    (needs ``node`` and ``npm``). Its fixed credentials are ``S3RVER`` /
    ``S3RVER``; buckets are addressed path-style.

:func:`start_s3_server` starts either and returns what reaches it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _s3 import start_moto_process, wait_for_server  # noqa: E402

#: Version of the npm package the benchmarks were measured with.
S3RVER_VERSION = "3.7.1"
#: Where it is installed (outside the repository); ``DASKMASK_S3RVER_PREFIX`` overrides.
S3RVER_PREFIX = Path(os.environ.get("DASKMASK_S3RVER_PREFIX", "/opt/s3rver"))
#: The command that installs it there.
INSTALL_COMMAND = ["npm", "install", "--prefix", str(S3RVER_PREFIX), f"s3rver@{S3RVER_VERSION}"]
#: The servers the benchmarks know.
SERVERS = ("moto", "s3rver")


@dataclass
class RunningServer:
    """A started S3 server: its process, endpoint and the credentials it accepts."""

    kind: str
    process: subprocess.Popen
    endpoint: str
    key: str
    secret: str

    @property
    def storage_options(self) -> dict[str, str]:
        """s3fs options reaching the server."""
        return {"key": self.key, "secret": self.secret, "endpoint_url": self.endpoint}

    @property
    def environment(self) -> dict[str, str]:
        """The ``AWS_*`` variables reaching the server."""
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def stop(self) -> None:
        """Stop the server process."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def s3rver_binary() -> Path:
    """Path of the ``s3rver`` command, installing the npm package first if it is missing.

    Raises
    ------
    RuntimeError
        ``npm`` is not installed or the installation failed; the message
        gives the command to run.

    """
    binary = S3RVER_PREFIX / "node_modules" / ".bin" / "s3rver"
    if binary.exists():
        return binary
    command = " ".join(INSTALL_COMMAND)
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise RuntimeError(
            f"s3rver is not installed in {S3RVER_PREFIX} and node/npm are missing. Install "
            f"Node.js (apt-get install nodejs npm), then run: {command}"
        )
    print(f"installing s3rver: {command}", flush=True)
    S3RVER_PREFIX.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(INSTALL_COMMAND, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not binary.exists():
        raise RuntimeError(
            f"Installing s3rver failed ({command}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return binary


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_s3rver(folder: Path) -> tuple[subprocess.Popen, str]:
    """Start s3rver on 127.0.0.1 with its objects in a new folder under ``folder``.

    Returns
    -------
    process : subprocess.Popen
    endpoint : str

    """
    binary = s3rver_binary()
    port = _free_port()
    data = folder / f"s3rver-{port}"
    data.mkdir(parents=True, exist_ok=True)
    log = folder / f"s3rver-{port}.log"
    process = subprocess.Popen(
        [str(binary), "-d", str(data), "-a", "127.0.0.1", "-p", str(port), "-s"]
        + ["--no-vhost-buckets"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    return process, wait_for_server(process, port, log, "s3rver")


def start_s3_server(kind: str, folder: Path) -> RunningServer:
    """Start the S3 server ``kind`` (one of :data:`SERVERS`) as a separate process.

    Parameters
    ----------
    kind : {"moto", "s3rver"}
        Which server.
    folder : pathlib.Path
        Where its log (and, for s3rver, its objects) go.

    Returns
    -------
    RunningServer

    """
    if kind == "moto":
        process, endpoint = start_moto_process(folder)
        return RunningServer(kind, process, endpoint, "testing", "testing")
    if kind == "s3rver":
        process, endpoint = start_s3rver(folder)
        return RunningServer(kind, process, endpoint, "S3RVER", "S3RVER")
    raise ValueError(f"unknown S3 server {kind!r}; choose one of {SERVERS}")


def remove_s3rver_data(server: RunningServer, folder: Path) -> None:
    """Remove the objects an s3rver kept on disk, and its empty log (after it stopped)."""
    if server.kind == "s3rver":
        port = server.endpoint.rsplit(":", 1)[1]
        shutil.rmtree(folder / f"s3rver-{port}", ignore_errors=True)
        (folder / f"s3rver-{port}.log").unlink(missing_ok=True)
