"""A real S3 API on 127.0.0.1 for the remote tests and benchmarks: moto's server mode, started and stopped here.

:class:`LocalS3` starts a ``ThreadedMotoServer`` on a free loopback port (no network beyond this machine), creates a
bucket, and gives the environment that points clients at it: test credentials and ``AWS_ENDPOINT_URL_S3``, the
standard variable botocore (and so s3fs) reads, exactly as a user would set them; featcache itself takes none.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time

__all__ = ["LocalS3", "S3_ENV"]

# What a user sets for any S3-compatible store; the endpoint is added by LocalS3.
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip


class LocalS3:
    """moto's S3 server on 127.0.0.1 with one bucket; a context manager.

    Args:
        bucket: the bucket to create.
        process: run the server as a process of its own (benchmarks) rather than a thread of this one (tests).

    Raises:
        ImportError: moto (``pip install 'moto[server]'``, in featcache's ``dev`` extra) is not installed.
        OSError: the server could not bind a loopback port.
    """

    def __init__(self, bucket: str = "featcache-test", *, process: bool = False):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
        self.bucket, self.process = bucket, process
        self.server = None if process else ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] = {}

    def start(self) -> LocalS3:
        """Start the server (a thread of this process, or with ``process`` a process of its own, so that it does
        not share this interpreter's lock with the client being measured) and create the bucket."""
        import boto3

        _forget_clients()
        if self.server is not None:
            self.server.start()
            host, port = self.server.get_host_and_port()
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                host, port = s.getsockname()
            cmd = [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.endpoint = f"http://{host}:{port}"
        self.env = {**S3_ENV, "AWS_ENDPOINT_URL_S3": self.endpoint}
        client = boto3.client("s3", endpoint_url=self.endpoint, **_credentials(self.env))
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=self.bucket)
                return self
            except Exception:  # the process is still starting
                if self.proc is None or time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise
                time.sleep(0.2)

    def url(self, *parts: str) -> str:
        """``s3://<bucket>/<parts...>``."""
        return "/".join([f"s3://{self.bucket}", *parts])

    def stop(self) -> None:
        _forget_clients()
        if self.server is not None:
            self.server.stop()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _forget_clients() -> None:
    """Drop the S3 filesystems made so far: each was made for the endpoint of its time (an earlier server's, in a
    test session that starts several)."""
    from ..locations import _filesystem_cached

    _filesystem_cached.cache_clear()
    try:
        import s3fs
    except ImportError:  # nothing made without it
        return
    s3fs.S3FileSystem.clear_instance_cache()


def _credentials(env: dict[str, str]) -> dict[str, str]:
    return {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
            "region_name": env["AWS_DEFAULT_REGION"]}  # fmt: skip
