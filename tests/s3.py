"""A real S3 API on 127.0.0.1 for tests: moto's server, a fresh bucket per test, keys in the environment.

Use it with `pytest_plugins = ["tests.s3"]` (in a test module or the root conftest) for the
fixtures `s3_server` (one server per session), `s3_lake` (a Lake on a new bucket) and `any_lake`
(the same test on a local directory and on S3), or call `moto_server()` to drive one by hand.
Test modules should import nothing else from here: a plugin imported first is not assert-rewritten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from ingest.lake import Lake, open_lake

# Distinctive values, so a test can prove they never reach a repr, a log line or an error.
ACCESS_KEY = "AKIAMOTOTESTKEY00042"
SECRET_KEY = "moto-secret-d41d8cd98f00b204e980"
REGION = "us-east-1"
_ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",  # never probe 169.254.169.254 for credentials or region
}


@dataclass(frozen=True)
class S3Server:
    """A running moto server: its endpoint, and helpers to make buckets and lakes on it."""

    endpoint: str  # http://127.0.0.1:<port>
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"lake-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        ).create_bucket(Bucket=name)
        return name

    def lake(self, bucket: str, prefix: str = "lake") -> Lake:
        return open_lake(f"s3://{bucket}/{prefix}", endpoint=self.endpoint, region=REGION, allow_http=True)


@contextlib.contextmanager
def moto_server() -> Iterator[S3Server]:
    """Start moto on a free loopback port with test keys in the environment; stop and restore after."""
    saved = {k: os.environ.get(k) for k in _ENV}
    os.environ.update(_ENV)
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)  # one access-log line per request drowns the test output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()
        werkzeug.setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with moto_server() as server:
        yield server


@pytest.fixture
def s3_lake(s3_server: S3Server) -> Lake:
    return s3_server.lake(s3_server.create_bucket())


@pytest.fixture(params=["local", "s3"])
def any_lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    if request.param == "local":
        return open_lake(str(tmp_path / "lake"))
    # Only S3 runs start the server, so `-k local` needs no moto at all.
    lake: Lake = request.getfixturevalue("s3_lake")
    return lake
