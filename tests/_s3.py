"""A real S3 server for the tests: moto's server mode on 127.0.0.1, over HTTP.

Nothing in s3fs, fsspec or botocore is mocked: the tests talk HTTP to a
``moto.server.ThreadedMotoServer`` started once per session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class S3Server:
    """Where the test S3 server listens, and options that reach it."""

    endpoint_url: str

    @property
    def storage_options(self) -> dict[str, str]:
        """s3fs options with the test credentials and the endpoint."""
        return {"key": "testing", "secret": "testing", "endpoint_url": self.endpoint_url}

    def filesystem(self):
        """A fresh s3fs file system on the server."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)

    def new_bucket(self, prefix: str = "dm") -> str:
        """Create a bucket with a unique name and return it."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server, with the test credentials in the environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {key: os.environ.get(key) for key in _ENVIRONMENT}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    try:
        yield S3Server(endpoint)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


_ENVIRONMENT = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
)


def start_moto_process(
    folder: Path, environment: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """Start moto's S3 server as a process of its own; return it and its endpoint.

    Used where the server must not share the caller's process (a server that
    checks credentials, benchmarks that measure the caller's memory).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = folder / f"moto-{port}.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **(environment or {})},
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    return server, wait_for_server(server, port, log, "moto")


def wait_for_server(process: subprocess.Popen, port: int, log: Path, name: str) -> str:
    """Wait (30 s at most) until a server process listens on 127.0.0.1:``port``.

    Returns its ``http://`` endpoint; raises ``RuntimeError`` with its log if
    it exits or does not listen in time (and kills it).
    """
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"{name} did not start: {log.read_text()}") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def s3_server_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A second moto server, in its own process, that checks credentials.

    moto accepts any key unless ``INITIAL_NO_AUTH_ACTION_COUNT`` is set when
    it starts; with 0 it refuses keys it does not know, as S3 does.
    """
    server, endpoint = start_moto_process(
        tmp_path_factory.mktemp("moto-auth"), {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    )
    try:
        yield S3Server(endpoint)
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A new, empty bucket on the test server."""
    return s3_server.new_bucket()
