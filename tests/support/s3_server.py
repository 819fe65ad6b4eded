"""A real S3 API on loopback for upload tests: moto's ThreadedMotoServer on 127.0.0.1.

Uploads go over real HTTP with real SigV4 signing through boto3, and presigned URLs are fetched
with ``requests``, so the whole path a RunPod job takes is exercised without a network.

Fixtures:
    s3_server (session): an :class:`S3Endpoint` with a created bucket.
    s3_server_factory: starts extra servers (stopped at the end of the test), e.g. to stop one
        mid-test and see what a dead endpoint does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class S3Endpoint:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    bucket: str
    region: str = "us-east-1"

    def client(self) -> Any:
        """A plain boto3 client for the test's own checks (listing, reading back)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )


class LoopbackS3:
    """One moto S3 server on 127.0.0.1 and a free port; stop() really closes the socket."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._stopped = False
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"

    def endpoint(self, bucket: str | None = None) -> S3Endpoint:
        """Credentials for this server, with ``bucket`` (default: a fresh name) created."""
        endpoint = S3Endpoint(
            endpoint_url=self.endpoint_url,
            access_key_id="AKIATESTLOOPBACK0001",
            secret_access_key="loopback-secret-" + uuid.uuid4().hex,
            bucket=bucket or f"test-{uuid.uuid4().hex[:12]}",
        )
        endpoint.client().create_bucket(Bucket=endpoint.bucket)
        return endpoint

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.stop()
        # shutdown() leaves the listening socket open: connections would hang, not be refused.
        inner = getattr(self._server, "_server", None)
        if inner is not None:
            inner.server_close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Endpoint]:
    """A loopback S3 endpoint, credentials and an existing bucket, shared by the session."""
    server = LoopbackS3()
    try:
        yield server.endpoint()
    finally:
        server.stop()


@pytest.fixture
def s3_server_factory() -> Iterator[Callable[[], LoopbackS3]]:
    """Start extra loopback S3 servers; each is stopped (if still running) after the test."""
    started: list[LoopbackS3] = []

    def start() -> LoopbackS3:
        server = LoopbackS3()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
