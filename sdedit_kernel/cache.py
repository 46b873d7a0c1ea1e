"""A remote checkpoint is copied once per node into a local cache, then loaded from the local disk.

Large weights are memory-mapped from a local file (sdedit_kernel.weights): an object store cannot be
mapped, and a multi-GB download per model actor would dominate a job's start. So the loader copies
the files a model needs (and no others) into `<cache>/<key>/`:

- key: sha256 of the sorted list of (relative path, size, version fields) that the file system's
  `info()` reports for each file: S3/GCS ETags or md5/crc32c, else modification times. It costs one
  `info` per file and no download; a checkpoint rewritten in place gets new version fields and so a
  new key. (A store that reports neither would reuse a stale copy after an in-place rewrite with
  identical sizes: delete the cache folder then.)
- digest (the model's identity, `ScoreModel.digest`): sha256 of the lines "path<TAB>sha256(content)"
  of every file, computed while copying and kept in the copy (`.sdedit-digest`), so a cache hit reads
  no weights to know it. A local folder is hashed the same way, chunk by chunk, once: the digest is
  remembered under `<cache>/digests/<key>` (key as above, from its sizes and nanosecond mtimes).
- Once per node: an exclusive lock on `<cache>/<key>.lock` (fcntl, where it exists) makes concurrent
  loaders wait for the first; the copy is written into a temporary folder and renamed into place, so
  a reader never sees a partial copy and a crash leaves only a temporary folder behind.

The cache folder is `cache_dir`, else $SDEDIT_CACHE, else ~/.cache/sdedit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import CheckpointError
from .store import Store

DIGEST_FILE = ".sdedit-digest"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("SDEDIT_CACHE") or Path.home() / ".cache" / "sdedit")


def cache_key(store: Store, files: Iterable[str]) -> str:
    """The key of a checkpoint's files from their sizes and version fields (no content read)."""
    listing = [[rel, store.fingerprint(rel)] for rel in sorted(files)]
    return hashlib.sha256(json.dumps([store.uri, listing], sort_keys=True).encode()).hexdigest()


def local_copy(store: Store, files: Iterable[str], cache_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """(local folder, digest) of `files`: the store's own folder when local, else the node's cached copy."""
    files = sorted(set(files))
    if store.local:
        return store.root, _local_digest(store, files, cache_root(cache_dir))
    root = cache_root(cache_dir)
    key = cache_key(store, files)
    final = root / key
    if not (final / DIGEST_FILE).is_file():
        root.mkdir(parents=True, exist_ok=True)
        with _exclusive(root / f"{key}.lock"):
            if not (final / DIGEST_FILE).is_file():  # nobody finished it while we waited
                _copy(store, files, root, final)
    return str(final), (final / DIGEST_FILE).read_text().strip()


def content_digest(store: Store, files: Iterable[str]) -> str:
    """sha256 over "path<TAB>sha256(content)" lines of the files, each read in chunks."""
    lines = []
    for rel in sorted(files):
        h = hashlib.sha256()
        for block in store.chunks(rel):
            h.update(block)
        lines.append(f"{rel}\t{h.hexdigest()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _local_digest(store: Store, files: list[str], root: Path) -> str:
    """A local folder's content digest, remembered under <cache>/digests/<key> (key: path, sizes and
    mtimes), so that loads after the first hash nothing; an unwritable cache only costs the hashing."""
    memo = root / "digests" / cache_key(store, files)
    with contextlib.suppress(OSError):
        return memo.read_text().strip()
    digest = content_digest(store, files)
    with contextlib.suppress(OSError):
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
        tmp.write_text(digest + "\n")
        os.replace(tmp, memo)
    return digest


def _copy(store: Store, files: list[str], root: Path, final: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        lines = []
        for rel in files:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256()
            with open(target, "wb") as out:
                for block in store.chunks(rel):
                    h.update(block)
                    out.write(block)
            lines.append(f"{rel}\t{h.hexdigest()}\n")
        (tmp / DIGEST_FILE).write_text(hashlib.sha256("".join(lines).encode()).hexdigest() + "\n")
        if final.exists():  # a partial folder from an older, interrupted layout: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not (final / DIGEST_FILE).is_file():
        raise CheckpointError(f"{store.uri}: the cached copy in {final} is incomplete")


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): each process copies; the rename still keeps copies whole
        yield
        return
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
