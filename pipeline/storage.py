"""Storage: every byte the pipeline reads or writes goes through fsspec, via these few helpers.

Why one module: URIs (local paths, ``s3://``, ``gs://``, ``memory://``...) are resolved, joined and
written the same way in every stage, and the one subtle rule (atomic publication of a file) lives in
one place.
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def has_scheme(uri: str) -> bool:
    """True for ``s3://...``-style URIs (a Windows drive letter is not a scheme)."""
    return bool(_SCHEME.match(uri))


def absolute_uri(uri: str) -> str:
    """Local relative paths are made absolute (relative to the working directory); URIs stay."""
    if has_scheme(uri):
        return uri
    return os.path.abspath(os.path.expanduser(uri))


def resolve_relative(base_uri: str, ref: str) -> str:
    """Resolve ``ref`` (a guide or mask URI from a manifest) against the manifest's own location.

    Absolute references (with a scheme, or a local absolute path) are returned unchanged; anything
    else is taken relative to the folder holding the manifest, as HTML resolves links.
    """
    if has_scheme(ref) or os.path.isabs(ref):
        return ref
    if has_scheme(base_uri):
        scheme, rest = base_uri.split("://", 1)
        folder = posixpath.dirname(rest)
        return f"{scheme}://{posixpath.normpath(posixpath.join(folder, ref))}"
    return os.path.normpath(os.path.join(os.path.dirname(absolute_uri(base_uri)), ref))


def join_uri(base_uri: str, *parts: str) -> str:
    """Join path parts onto a folder URI with forward slashes, whatever the scheme."""
    base = base_uri.rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts)])


def url_to_fs(uri: str, options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec file system and in-filesystem path for ``uri`` (fsspec caches the instances)."""
    fs, path = fsspec.core.url_to_fs(uri, **dict(options or {}))
    return fs, path


def list_names(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """The names in a folder, listed afresh (an fsspec instance caches listings: another process, or an
    earlier run in this one, may have changed the folder since); none when it does not exist."""
    fs.invalidate_cache(path)
    try:
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> Any:
    """Wrap an fsspec file system for pyarrow / Ray Data readers and writers.

    Ray's ``read_json`` ignores an fsspec ``filesystem=``; the pyarrow wrapper works for every reader.
    """
    import pyarrow.fs as pafs

    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


class FileTooLargeError(ValueError):
    """A file is larger than the reader's limit (raised before its bytes are read)."""


def read_bytes(uri: str, options: Mapping[str, Any] | None = None, limit: int | None = None) -> bytes:
    """The file's bytes; with ``limit``, refuses a larger file from its size, and never reads past it."""
    fs, path = url_to_fs(uri, options)
    with fs.open(path, "rb") as f:
        if limit is None:
            return f.read()
        size = getattr(f, "size", None)
        if size is not None and size > limit:
            raise FileTooLargeError(f"{size} bytes")
        data = f.read(limit + 1)
        if len(data) > limit:
            raise FileTooLargeError(f"over {limit} bytes")
        return data


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Publish ``data`` at ``path`` so that no reader ever sees a half-written file.

    Locally: write a hidden temporary file in the same folder, then ``os.replace`` (atomic on POSIX).
    Object stores (S3, GCS, Azure) publish an object only when its upload completes, so a direct
    write is already atomic there and a rename would cost a server-side copy.
    """
    if is_local(fs):
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    with fs.open(path, "wb") as f:
        f.write(data)
