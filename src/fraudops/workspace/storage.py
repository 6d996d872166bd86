"""All workspace I/O in one place: a local folder or any fsspec URL, through the same code.

Paths handed to :class:`Storage` are relative to the workspace root and use ``/``. A write never leaves a
half-written file that a later step could read: on a filesystem it goes to a hidden temporary name in the
same folder and is renamed into place when complete (listings skip hidden names, and the step that owns a
folder removes what a crashed writer left there, :meth:`Storage.remove_leftovers`); on S3 the object is
uploaded whole, in one PUT or one multipart upload, which S3 makes visible only when it is complete, and a
failed write is aborted. Listings of an object store are read afresh, never from a cache older than our own
writes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import fsspec
import polars as pl

from fraudops.errors import StorageError
from fraudops.workspace.layout import FOLDERS

if TYPE_CHECKING:
    from fraudops.config import Settings

log = logging.getLogger("fraudops.storage")

TEMP_MARK = ".tmp-"
"""In the hidden name a write goes to until it is complete: ``.<name>.tmp-<random>``."""

_CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404", "412", "409")
"""S3's answers when a conditional request's condition does not hold (or a race with another one)."""

ENDPOINT_ENV = "FRAUDOPS_STORAGE__ENDPOINT_URL"
"""The setting ``storage.endpoint_url`` as an environment variable: a workspace on S3 reads its own
fraudops.yaml through the endpoint, so the endpoint cannot come from that file alone."""


def _protocols(fs: Any) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


class Storage:
    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        """``endpoint_url``: an S3-compatible server for ``s3://`` URLs; None =
        ``FRAUDOPS_STORAGE__ENDPOINT_URL``, else the standard AWS configuration (``AWS_ENDPOINT_URL_S3``,
        ``AWS_ENDPOINT_URL``, AWS itself)."""
        self.url = url.rstrip("/") or "/"
        self.endpoint_url = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
        options: dict[str, Any] = {}
        if self.url.startswith(("s3://", "s3a://")) and self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        self.fs, root = fsspec.core.url_to_fs(self.url, **options)
        self.root = root.rstrip("/") or "/"
        self.is_local = "file" in _protocols(self.fs)
        self.is_s3 = "s3" in _protocols(self.fs)
        self._client: Any = None
        if self.is_local:
            self.url = self.root

    @classmethod
    def of(cls, settings: Settings) -> Storage:
        """The storage of a workspace's settings (its ``storage.endpoint_url``)."""
        return cls(settings.workspace, settings.storage.endpoint_url)

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def __reduce__(self) -> tuple[type[Storage], tuple[str, str | None]]:
        """Pickled (sent to a Dask worker) as its URL and endpoint: the receiving process opens its own
        filesystem and S3 client (a live boto client cannot be pickled) with its own credentials."""
        return (Storage, (self.url, self.endpoint_url))

    def path(self, rel: str = "") -> str:
        """Filesystem path (no protocol) of a workspace-relative path."""
        rel = rel.strip("/")
        return posixpath.join(self.root, rel) if rel else self.root

    def uri(self, rel: str = "") -> str:
        """Full URL (with protocol for remote stores), for tools such as MLflow."""
        p = self.path(rel)
        return p if self.is_local else self.fs.unstrip_protocol(p)

    def _fresh(self, path: str) -> str:
        """``path``, its cached listing entries dropped on an object store: another process (the endpoint,
        a second execution) may have written it since we listed."""
        if not self.is_local:
            self.fs.invalidate_cache(path)
        return path

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self._fresh(self.path(rel))))

    def makedirs(self, rel: str) -> None:
        self.fs.makedirs(self.path(rel), exist_ok=True)

    def init_layout(self) -> None:
        for rel in FOLDERS:
            self.makedirs(rel)

    def ls(self, rel: str, suffixes: tuple[str, ...] | None = None) -> list[str]:
        """Workspace-relative paths of the files directly in a folder, sorted; hidden names skipped."""
        base = self._fresh(self.path(rel))
        if not self.fs.isdir(base):
            return []
        out = []
        for info in self.fs.ls(base, detail=True):
            if info["type"] != "file":
                continue
            name = posixpath.basename(info["name"].rstrip("/"))
            if name.startswith(".") or (suffixes and not name.lower().endswith(suffixes)):
                continue
            out.append(posixpath.join(rel.strip("/"), name))
        return sorted(out)

    def folders(self, rel: str) -> list[str]:
        """Workspace-relative paths of the folders directly in a folder, sorted."""
        base = self._fresh(self.path(rel))
        if not self.fs.isdir(base):
            return []
        return sorted(
            posixpath.join(rel.strip("/"), posixpath.basename(info["name"].rstrip("/")))
            for info in self.fs.ls(base, detail=True)
            if info["type"] == "directory"
        )

    def find(self, rel: str, suffixes: tuple[str, ...] | None = None) -> list[str]:
        """Workspace-relative paths of the files in a folder and below it, sorted; hidden names skipped."""
        base = self._fresh(self.path(rel))
        if not self.fs.isdir(base):
            return []
        out = []
        for path in self.fs.find(base):
            parts = posixpath.relpath(path, base).split("/")
            if any(p.startswith(".") for p in parts) or (suffixes and not path.lower().endswith(suffixes)):
                continue
            out.append(posixpath.join(rel.strip("/"), *parts))
        return sorted(out)

    def info(self, rel: str) -> dict[str, Any]:
        """The store's details of a file (size, modification time or LastModified, ETag on S3)."""
        return dict(self.fs.info(self._fresh(self.path(rel))))

    def size(self, rel: str) -> int:
        return int(self.fs.size(self._fresh(self.path(rel))))

    def open_read(self, rel: str) -> IO[bytes]:
        try:
            return self.fs.open(self._fresh(self.path(rel)), "rb")
        except FileNotFoundError as e:
            raise StorageError(f"{self.uri(rel)}: no such file") from e

    @contextlib.contextmanager
    def staged(self, rel: str) -> Iterator[str]:
        """A local path holding the file while the block runs: the file itself on a local workspace; on an
        object store a temporary copy fetched in one streaming GET (as SageMaker Batch Transform stages its
        inputs) — a reader that seeks between column chunks would otherwise issue a ranged GET per seek."""
        if self.is_local:
            if not os.path.isfile(self.path(rel)):
                raise StorageError(f"{self.uri(rel)}: no such file")
            yield self.path(rel)
            return
        with tempfile.TemporaryDirectory(prefix="fraudops-stage-") as folder:
            local = os.path.join(folder, posixpath.basename(rel))
            try:
                self.fs.get_file(self._fresh(self.path(rel)), local)
            except FileNotFoundError as e:
                raise StorageError(f"{self.uri(rel)}: no such file") from e
            yield local

    def read_bytes(self, rel: str) -> bytes:
        with self.open_read(rel) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_text(rel))

    @contextlib.contextmanager
    def open_write(self, rel: str) -> Iterator[IO[bytes]]:
        """A binary file that appears under ``rel`` only if the block completes."""
        final = self.path(rel)
        folder, name = posixpath.split(final)
        if self.is_s3:
            yield from self._put_whole(final)
            return
        self.fs.makedirs(folder, exist_ok=True)
        tmp = posixpath.join(folder, f".{name}{TEMP_MARK}{uuid.uuid4().hex}")
        try:
            with self.fs.open(tmp, "wb") as f:
                yield f
            self.fs.mv(tmp, final)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm(tmp)
            raise

    def _put_whole(self, final: str) -> Iterator[IO[bytes]]:
        """S3: stream to the final key; S3 shows the object only once the PUT (or the multipart upload)
        completes, so there is no temporary name to rename. A failed block aborts the upload."""
        f = self.fs.open(final, "wb")
        try:
            yield f
        except BaseException:
            with contextlib.suppress(Exception):
                f.discard()
            f.closed = True
            raise
        f.close()
        self.fs.invalidate_cache(posixpath.dirname(final))

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.open_write(rel) as f:
            f.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_text(rel, json.dumps(obj, indent=2, default=str) + "\n")

    # -- S3 conditional writes (the workspace lock): each is one request that S3 applies atomically
    def _s3_call(self, method: str, rel: str, **kw: Any) -> dict[str, Any] | None:
        """One S3 request on ``rel``'s object; None when its condition did not hold (or it is missing)."""
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=self.endpoint_url)
        bucket, key, _ = self.fs.split_path(self.path(rel))
        try:
            out: dict[str, Any] = getattr(self._client, method)(Bucket=bucket, Key=key, **kw)
        except Exception as e:
            code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
            if code in _CONDITION_FAILED:
                return None
            raise
        finally:
            self.fs.invalidate_cache(posixpath.dirname(self.path(rel)))
        return out

    def put_if_absent(self, rel: str, data: bytes) -> str | None:
        """S3: create the object only if none exists (``If-None-Match: *``); its ETag, or None."""
        out = self._s3_call("put_object", rel, Body=data, IfNoneMatch="*")
        return None if out is None else str(out["ETag"])

    def put_if_match(self, rel: str, data: bytes, etag: str) -> str | None:
        """S3: replace the object only if it is still the version ``etag`` (``If-Match``); the new ETag, or
        None."""
        out = self._s3_call("put_object", rel, Body=data, IfMatch=etag)
        return None if out is None else str(out["ETag"])

    def read_tagged(self, rel: str) -> tuple[bytes, str] | None:
        """S3: the object's bytes and its ETag, read in one request (None when it does not exist)."""
        out = self._s3_call("get_object", rel)
        return None if out is None else (out["Body"].read(), str(out["ETag"]))

    def delete_if_match(self, rel: str, etag: str) -> bool:
        """S3: delete the object only if it is still the version ``etag``; whether it was deleted."""
        return self._s3_call("delete_object", rel, IfMatch=etag) is not None

    def remove_leftovers(self, rel: str) -> list[str]:
        """Delete the temporary files a crashed writer left in a folder (and below); returns them.

        Only the step that owns the folder calls this, under the workspace lock, so no writer is live.
        """
        base = self.path(rel)
        if not self.fs.isdir(base):
            return []
        gone = []
        for path in self.fs.find(base):
            name = posixpath.basename(path)
            if name.startswith(".") and TEMP_MARK in name:
                self.fs.rm(path)
                gone.append(path)
        if gone:
            log.warning("removed %d temporary file(s) a crashed run left in %s", len(gone), self.uri(rel))
        return gone

    def delete(self, rel: str, recursive: bool = False) -> None:
        if self.exists(rel):
            self.fs.rm(self.path(rel), recursive=recursive)
            if not self.is_local:
                self.fs.invalidate_cache(self.path(rel))

    def read_frame(self, rel: str, columns: list[str] | None = None) -> pl.DataFrame:
        """A CSV or Parquet file as a polars DataFrame (all columns read as given in the file)."""
        lower = rel.lower()
        with self.open_read(rel) as f:
            if lower.endswith(".parquet"):
                return pl.read_parquet(f, columns=columns)
            if lower.endswith(".csv"):
                df = pl.read_csv(f, infer_schema_length=10_000, try_parse_dates=False)
                return df.select(columns) if columns else df
        raise StorageError(f"{self.uri(rel)}: unknown file type (expected .csv or .parquet)")

    def write_frame(self, rel: str, df: pl.DataFrame) -> None:
        """Write a DataFrame as CSV or Parquet, chosen by the name's suffix, atomically."""
        buf = io.BytesIO()
        if rel.lower().endswith(".parquet"):
            df.write_parquet(buf)
        elif rel.lower().endswith(".csv"):
            df.write_csv(buf)
        else:
            raise StorageError(f"{self.uri(rel)}: unknown file type (expected .csv or .parquet)")
        self.write_bytes(rel, buf.getvalue())
