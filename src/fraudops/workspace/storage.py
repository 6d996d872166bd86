"""All workspace I/O in one place: a local folder or any fsspec URL, through the same code.

Paths handed to :class:`Storage` are relative to the workspace root and use ``/``. Every write goes to
a hidden temporary name in the same folder and is renamed into place when complete, so a crash never
leaves a half-written file that a later step could read; listings skip hidden names, and the step that owns
a folder removes what a crashed writer left there (:meth:`Storage.remove_leftovers`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import posixpath
import uuid
from collections.abc import Iterator
from typing import IO, Any

import fsspec
import polars as pl

from fraudops.errors import StorageError
from fraudops.workspace.layout import FOLDERS

log = logging.getLogger("fraudops.storage")

TEMP_MARK = ".tmp-"
"""In the hidden name a write goes to until it is complete: ``.<name>.tmp-<random>``."""


class Storage:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") or "/"
        self.fs, root = fsspec.core.url_to_fs(self.url)
        self.root = root.rstrip("/") or "/"
        self.is_local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )
        if self.is_local:
            self.url = self.root

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def path(self, rel: str = "") -> str:
        """Filesystem path (no protocol) of a workspace-relative path."""
        rel = rel.strip("/")
        return posixpath.join(self.root, rel) if rel else self.root

    def uri(self, rel: str = "") -> str:
        """Full URL (with protocol for remote stores), for tools such as MLflow."""
        p = self.path(rel)
        return p if self.is_local else self.fs.unstrip_protocol(p)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def makedirs(self, rel: str) -> None:
        self.fs.makedirs(self.path(rel), exist_ok=True)

    def init_layout(self) -> None:
        for rel in FOLDERS:
            self.makedirs(rel)

    def ls(self, rel: str, suffixes: tuple[str, ...] | None = None) -> list[str]:
        """Workspace-relative paths of the files directly in a folder, sorted; hidden names skipped."""
        base = self.path(rel)
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

    def size(self, rel: str) -> int:
        return int(self.fs.size(self.path(rel)))

    def open_read(self, rel: str) -> IO[bytes]:
        try:
            return self.fs.open(self.path(rel), "rb")
        except FileNotFoundError as e:
            raise StorageError(f"{self.uri(rel)}: no such file") from e

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

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.open_write(rel) as f:
            f.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_text(rel, json.dumps(obj, indent=2, default=str) + "\n")

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
