"""A real S3 API on 127.0.0.1 for the remote tests and benchmarks: moto's server mode, started and stopped here.

:class:`LocalS3` starts a ``ThreadedMotoServer`` on a free loopback port (no network beyond this machine), creates a
bucket, and gives the environment that points clients at it: test credentials and ``AWS_ENDPOINT_URL_S3``, the
standard variable botocore (and so s3fs) reads, exactly as a user would set them; featcache itself takes none.
"""

from __future__ import annotations

import logging
import os

__all__ = ["LocalS3", "S3_ENV"]

# What a user sets for any S3-compatible store; the endpoint is added by LocalS3.
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip


class LocalS3:
    """moto's S3 server on 127.0.0.1 with one bucket; a context manager.

    Args:
        bucket: the bucket to create.

    Raises:
        ImportError: moto (``pip install 'moto[server]'``, in featcache's ``dev`` extra) is not installed.
        OSError: the server could not bind a loopback port.
    """

    def __init__(self, bucket: str = "featcache-test"):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
        self.bucket = bucket
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.env: dict[str, str] = {}

    def start(self) -> LocalS3:
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.env = {**S3_ENV, "AWS_ENDPOINT_URL_S3": self.endpoint}
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, **_credentials(self.env))
        client.create_bucket(Bucket=self.bucket)
        return self

    def url(self, *parts: str) -> str:
        """``s3://<bucket>/<parts...>``."""
        return "/".join([f"s3://{self.bucket}", *parts])

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _credentials(env: dict[str, str]) -> dict[str, str]:
    return {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
            "region_name": env["AWS_DEFAULT_REGION"]}  # fmt: skip


def environ_for(env: dict[str, str]) -> dict[str, str]:
    """This process's environment with ``env`` over it (for subprocesses)."""
    return {**os.environ, **env}
