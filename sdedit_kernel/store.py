"""Read-only access to a checkpoint folder: the local disk, or any fsspec URI (fsspec imported lazily).

One small class serves the pixel loader (which reads a few files whole), the config-only reader
(`sdedit_kernel.config`, which reads JSON only) and the remote-checkpoint cache (which lists,
fingerprints and streams files without holding them in memory).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from .errors import CheckpointError

# Fields of an fsspec `info()` that change when a file is rewritten (S3 ETag, GCS md5Hash/crc32c, mtimes).
VERSION_FIELDS = ("ETag", "etag", "md5Hash", "md5", "crc32c", "mtime", "LastModified", "last_modified",
                  "created", "updated", "version_id", "VersionId")
CHUNK = 16 * 2**20  # bytes per read when streaming a large file


class Store:
    """Files under a checkpoint root; every path is relative to it, with "/" separators."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = uri.rstrip("/")
        if "://" in uri and not uri.startswith("file://"):
            import fsspec  # lazily: only remote checkpoints need it

            self.fs, self.root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
            self.root = self.root.rstrip("/")
        else:
            self.fs, self.root = None, os.path.abspath(uri.removeprefix("file://"))
            if not os.path.isdir(self.root):
                raise CheckpointError(f"{uri}: no such checkpoint folder")

    @property
    def local(self) -> bool:
        return self.fs is None

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def exists(self, rel: str) -> bool:
        return self.fs.isfile(self.path(rel)) if self.fs else os.path.isfile(self.path(rel))

    def read(self, rel: str) -> bytes:
        try:
            with self._open(rel) as f:
                return f.read()
        except (FileNotFoundError, OSError) as e:
            raise CheckpointError(f"{self.uri}/{rel}: cannot read ({e})") from e

    def json(self, rel: str) -> dict[str, Any]:
        try:
            data = json.loads(self.read(rel))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{self.uri}/{rel}: not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise CheckpointError(f"{self.uri}/{rel}: expected a JSON object")
        return data

    def files(self, folder: str) -> list[str]:
        """The plain files directly in `folder` (relative paths, sorted); [] when there is no such folder."""
        try:
            if self.fs is None:
                base = self.path(folder)
                return sorted(f"{folder}/{n}" for n in os.listdir(base) if os.path.isfile(os.path.join(base, n)))
            entries = self.fs.ls(self.path(folder), detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        prefix = self.root + "/"
        return sorted(e["name"].removeprefix(prefix) for e in entries if e.get("type") == "file")

    def fingerprint(self, rel: str) -> dict[str, Any]:
        """The file's size and whatever version fields its file system reports (no content read)."""
        try:
            if self.fs is None:
                st = os.stat(self.path(rel))
                return {"size": st.st_size, "mtime": st.st_mtime_ns}
            info = self.fs.info(self.path(rel))
        except (FileNotFoundError, OSError) as e:
            raise CheckpointError(f"{self.uri}/{rel}: cannot stat ({e})") from e
        return {"size": info.get("size"), **{k: str(info[k]) for k in VERSION_FIELDS if info.get(k) is not None}}

    def chunks(self, rel: str) -> Iterator[bytes]:
        """The file's bytes in chunks of CHUNK, so a large file is never held whole."""
        try:
            with self._open(rel) as f:
                while block := f.read(CHUNK):
                    yield block
        except (FileNotFoundError, OSError) as e:
            raise CheckpointError(f"{self.uri}/{rel}: cannot read ({e})") from e

    def _open(self, rel: str):
        return self.fs.open(self.path(rel), "rb") if self.fs else open(self.path(rel), "rb")
