"""Where a cache, a store or a results log lives: a local path, or an object-store URL (``s3://``, ``gs://``, ...).

:func:`location` parses what a user typed (``--cache-dir``, ``FEATCACHE_CACHE``, a store path, ``--results``): a URL
with a scheme that fsspec knows becomes a :class:`RemotePath`, anything else a :class:`pathlib.Path`, exactly as
before. A :class:`RemotePath` offers the few :class:`pathlib.Path` methods the store layer uses (``/``, ``parent``,
``exists``, ``read_bytes``, ``glob`` ...) over an fsspec filesystem (s3fs, gcsfs, ...), so the store's code reads the
same for both; what differs (no fsync, no rename, no hard links) is decided where it happens, by ``isinstance``.

Object stores have no directories: a "directory" exists when an object lies below it, ``mkdir`` does nothing, and
every write is one whole-object PUT that readers see whole or not at all (the object-store form of tmp + rename).
Credentials and endpoints come from the usual environment and config files (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
``~/.aws/credentials``, ``AWS_ENDPOINT_URL_S3``, ``GOOGLE_APPLICATION_CREDENTIALS``, fsspec's own config), never from
featcache options; they are never logged. Errors of the object store that a user must act on (a missing bucket,
missing or refused credentials, an unreachable endpoint, a missing extra) become one :class:`RemoteError` line.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

from .errors import ConfigError, FeatcacheError

__all__ = ["RemoteError", "RemotePath", "is_url", "location", "remote_errors", "zarr_store"]

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
# The packages that serve a protocol, for the "pip install" hint (fsspec names the rest itself).
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
# Listings are never cached: a shard lock or a marker another process wrote a moment ago must be seen.
_OPTIONS = {"use_listings_cache": False}


class RemoteError(FeatcacheError, OSError):
    """Object storage refused or could not be reached: a missing bucket, missing credentials, no such endpoint.

    An OSError too, so that code which tolerates an unwritable cache (a verify verdict not kept) tolerates it.
    """


def is_url(value: str | os.PathLike) -> bool:
    """Whether ``value`` is a URL with a scheme (``s3://b/x``) other than ``file://``."""
    m = _URL.match(str(value)) if isinstance(value, str) else None
    return bool(m) and m.group(1).lower() != "file"


def location(value: str | os.PathLike | RemotePath, what: str = "path") -> Path | RemotePath:
    """``value`` as a :class:`RemotePath` when it is an object-store URL, else as a :class:`pathlib.Path`.

    ``file://`` URLs are local paths. ``what`` names the option in errors (e.g. ``--cache-dir``).

    Raises:
        ConfigError: a URL without a bucket, with a '..' part, or of a protocol fsspec does not know.
        RemoteError: the protocol's package is not installed (the extra to install is named).
    """
    if isinstance(value, RemotePath | Path):
        return value
    text = os.fspath(value)
    m = _URL.match(text)
    if m is None:
        return Path(text)
    protocol, rest = m.group(1).lower(), m.group(2).strip("/")
    if protocol == "file":
        return Path("/" + rest if text.startswith("file:///") else rest)
    if not rest:
        raise ConfigError(f"{what} '{text}' names no bucket; write it as {protocol}://BUCKET/PREFIX")
    if ".." in rest.split("/"):  # an object store keeps '..' as a literal key part: not the parent a user means
        raise ConfigError(f"{what} '{text}': '..' in an object-store URL is not a parent folder; write the prefix out")
    return RemotePath(_filesystem(protocol, what, text), protocol, rest)


@functools.cache
def _filesystem_cached(protocol: str) -> Any:
    import fsspec

    return fsspec.filesystem(protocol, **_OPTIONS)


def _filesystem(protocol: str, what: str, text: str) -> Any:
    import fsspec

    if protocol not in fsspec.available_protocols():
        raise ConfigError(
            f"{what} '{text}': unknown storage protocol '{protocol}://'; give a local path or an fsspec URL "
            "(s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, ...)"
        )
    try:
        return _filesystem_cached(protocol)
    except ImportError as e:
        extra = _EXTRAS.get(protocol)
        fix = f"pip install 'featcache[{extra}]'" if extra else f"install the fsspec package for {protocol}://"
        raise RemoteError(f"{what} '{text}' needs a package that is not installed ({e}); {fix}") from None


def _credential_error(e: BaseException) -> bool:
    names = {c.__name__ for c in type(e).__mro__} | {type(e.__cause__).__name__ if e.__cause__ else ""}
    return bool(names & {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                         "DefaultCredentialsError", "RefreshError"})  # fmt: skip


def _connection_error(e: BaseException) -> bool:
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"EndpointConnectionError", "ClientConnectorError", "ConnectTimeoutError",
                         "ServerDisconnectedError", "ClientOSError"})  # fmt: skip


@contextlib.contextmanager
def remote_errors(where: RemotePath) -> Iterator[None]:
    """Turn what the object store says a user must act on into one :class:`RemoteError` line.

    A missing object stays a FileNotFoundError (absence is an answer, e.g. of a chunk marker); a missing bucket,
    refused or missing credentials and an unreachable endpoint do not.
    """
    try:
        yield
    except FeatcacheError:
        raise
    except FileNotFoundError as e:
        if "bucket" in str(e).lower():
            raise RemoteError(
                f"{where}: bucket '{where.bucket}' does not exist; create it, or check the URL "
                "(--cache-dir, FEATCACHE_CACHE, --results or the store path)"
            ) from None
        raise
    except PermissionError as e:
        raise RemoteError(
            f"{where}: access denied ({e}); check the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, "
            "~/.aws/credentials, GOOGLE_APPLICATION_CREDENTIALS) and the bucket's permissions"
        ) from None
    except Exception as e:
        if _credential_error(e):
            raise RemoteError(
                f"{where}: no credentials found for {where.protocol}:// ({type(e).__name__}); set them the usual way "
                "(AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials; "
                "GOOGLE_APPLICATION_CREDENTIALS for gs://)"
            ) from None
        if _connection_error(e):
            raise RemoteError(
                f"{where}: cannot reach the object store ({type(e).__name__}: {e}); check the network and the "
                "endpoint (AWS_ENDPOINT_URL_S3, fsspec config)"
            ) from None
        raise


class RemotePath:
    """An object-store location ``<protocol>://<bucket>/<key>`` with the :class:`pathlib.Path` methods the store
    layer uses. Not an ``os.PathLike``: handing one to ``open`` or ``np.memmap`` fails instead of writing a local
    file named ``s3:``.

    Args:
        fs: the fsspec filesystem (synchronous API).
        protocol: ``s3``, ``gs``, ...
        key: ``bucket/prefix/...`` without surrounding slashes.
    """

    def __init__(self, fs: Any, protocol: str, key: str):
        self.fs, self.protocol, self.key = fs, protocol, str(PurePosixPath(key)) if key else ""

    # --- pure path arithmetic -------------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.protocol}://{self.key}"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and str(self) == str(other)

    def __lt__(self, other: RemotePath) -> bool:
        return str(self) < str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, other: str | os.PathLike) -> RemotePath:
        return self.joinpath(other)

    def joinpath(self, *parts: str | os.PathLike) -> RemotePath:
        return RemotePath(self.fs, self.protocol, str(PurePosixPath(self.key, *map(os.fspath, parts))))

    @property
    def parts(self) -> tuple[str, ...]:
        return PurePosixPath(self.key).parts

    @property
    def bucket(self) -> str:
        return self.parts[0]

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def stem(self) -> str:
        return PurePosixPath(self.key).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.key).suffix

    @property
    def parent(self) -> RemotePath:
        return RemotePath(self.fs, self.protocol, str(PurePosixPath(self.key).parent))

    @property
    def parents(self) -> Sequence[RemotePath]:
        return [RemotePath(self.fs, self.protocol, str(p)) for p in PurePosixPath(self.key).parents if str(p) != "."]

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def relative_to(self, other: RemotePath) -> PurePosixPath:
        return PurePosixPath(self.key).relative_to(other.key)

    def resolve(self) -> RemotePath:
        return self

    def is_symlink(self) -> bool:
        return False

    # --- the object store -------------------------------------------------------------------------------------
    def _call(self, name: str, *args, **kwargs):
        with remote_errors(self):
            return getattr(self.fs, name)(*args, **kwargs)

    def check_bucket(self) -> None:
        """Raise when the bucket does not exist (what a missing object below it may mean).

        Raises:
            RemoteError: no such bucket, or no access to it.
        """
        if not self._call("exists", self.bucket):
            raise RemoteError(
                f"{self}: bucket '{self.bucket}' does not exist; create it, or check the URL "
                "(--cache-dir, FEATCACHE_CACHE, --results or the store path)"
            )

    def exists(self) -> bool:
        """An object at the key, or objects below it (a "directory")."""
        return bool(self._call("exists", self.key))

    def info(self) -> dict:
        """The object's metadata (``size``, ``type``, ``ETag``, ``LastModified``); FileNotFoundError if absent."""
        return self._call("info", self.key)

    def is_file(self) -> bool:
        try:
            return self.info().get("type") == "file"
        except FileNotFoundError:
            return False

    def is_dir(self) -> bool:
        return bool(self._call("isdir", self.key))

    def stat(self) -> SimpleNamespace:
        info = self.info()
        modified = info.get("LastModified") or info.get("mtime") or info.get("updated")
        mtime = modified.timestamp() if hasattr(modified, "timestamp") else float(modified or 0)
        return SimpleNamespace(st_size=int(info.get("size") or 0), st_mtime=mtime)

    def read_bytes(self) -> bytes:
        return self._call("cat_file", self.key)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Byte ranges [start, stop) of the object, fetched concurrently."""
        n = len(ranges)
        return self._call("cat_ranges", [self.key] * n, [a for a, _ in ranges], [b for _, b in ranges])

    def write_bytes(self, data: bytes, **conditions: Any) -> dict:
        """One whole-object PUT; ``conditions`` are passed to it (``mode="create"``, S3's ``IfMatch``)."""
        return self._call("pipe_file", self.key, data, **conditions) or {}

    def create_bytes(self, data: bytes) -> dict:
        """One PUT that fails (FileExistsError) when the object exists: a conditional create (S3's If-None-Match,
        GCS's generation 0) where the filesystem offers fsspec's ``mode="create"``, else a check then a PUT."""
        try:
            return self.write_bytes(data, mode="create")
        except TypeError:  # an fsspec filesystem older than mode="create": not atomic, callers re-check
            if self.exists():
                raise FileExistsError(str(self)) from None
            return self.write_bytes(data)

    def write_text(self, text: str) -> dict:
        return self.write_bytes(text.encode())

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing: object stores have no directories (the bucket must exist)."""

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self._call("rm_file", self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        """Remove the object, or every object below the key."""
        with contextlib.suppress(FileNotFoundError):
            self._call("rm", self.key, recursive=True)

    def iterdir(self) -> list[RemotePath]:
        try:
            found = self._call("ls", self.key, detail=False)
        except FileNotFoundError:
            return []
        return [RemotePath(self.fs, self.protocol, k) for k in sorted(found) if k.strip("/") != self.key]

    def glob(self, pattern: str) -> list[RemotePath]:
        found = self._call("glob", f"{self.key}/{pattern}")
        return [RemotePath(self.fs, self.protocol, k) for k in sorted(found)]

    def rglob(self, pattern: str) -> list[RemotePath]:
        """Objects below the key whose name matches ``pattern``."""
        found = self._call("find", self.key)
        return [RemotePath(self.fs, self.protocol, k) for k in sorted(found) if fnmatch.fnmatch(k.rsplit("/")[-1],
                                                                                                pattern)]  # fmt: skip

    def find(self) -> list[str]:
        """Every object below the key, as keys relative to it (sorted)."""
        try:
            found = self._call("find", self.key)
        except FileNotFoundError:
            return []
        return sorted(str(PurePosixPath(k).relative_to(self.key)) for k in found if k != self.key)


def zarr_store(path: Path | RemotePath, read_only: bool = False) -> Any:
    """What ``zarr.open_group``/``open_array``/``create_group`` take for ``path``: the path itself when local (the
    local store is opened exactly as before), a zarr ``FsspecStore`` over the same bucket and key when remote."""
    if not isinstance(path, RemotePath):
        return path
    from zarr.storage import FsspecStore

    with remote_errors(path):
        return FsspecStore.from_url(str(path), storage_options=dict(_OPTIONS), read_only=read_only)
