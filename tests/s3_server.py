"""A real S3 API server on loopback for tests: moto's standalone server, started as a separate process.

The store and the registry talk to it over HTTP exactly as to MinIO or AWS (obstore's S3 client, signed requests);
nothing on their path is mocked. Credentials are fake and travel the way users give real ones: ``AWS_*`` environment
variables, which child processes (a cloud, an edge, a learner) inherit.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

from tests.e2e.fleet import free_port

# What a user sets to point fleetloop at MinIO or another S3-compatible server (README: "Storage beyond one disk").
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "fleetloop-test",
    "AWS_SECRET_ACCESS_KEY": "fleetloop-test-secret",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}


@dataclass
class S3Server:
    """A running moto server: ``endpoint`` (http://127.0.0.1:PORT) and its process."""

    endpoint: str
    process: subprocess.Popen

    def env(self) -> dict[str, str]:
        """The environment a client of this server needs."""
        return {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def new_bucket(self) -> str:
        """Creates a bucket of its own for one test and returns its name."""
        name = f"fleetloop-{uuid.uuid4().hex[:12]}"
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
        return name

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start_s3_server(timeout_s: float = 30.0) -> S3Server:
    """Starts ``python -m moto.server`` on a free loopback port and waits until it answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = S3Server(f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto's S3 server exited at start (code {process.returncode})")
        try:
            with urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=1) as response:
                response.read()
            return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"moto's S3 server did not answer on {server.endpoint} within {timeout_s:.0f} s")
