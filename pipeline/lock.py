"""One writer per output folder: ``OUT/.sdedit.lock`` says which run holds OUT, and a second is refused.

Two runs writing into one OUT would both make the same outputs and both add index rows for them.
So a run takes the lock before it touches OUT and gives it back when it ends; a run that finds the
lock held is refused at start (exit 2) with who holds it: host, pid, start time, run id.

A lock left by a run that died is stale and is taken over (with a warning, so a resume after a kill
just works): on the same host when its process no longer exists; from anywhere when its heartbeat
(rewritten every :data:`HEARTBEAT_S` seconds by the holder) is older than :data:`STALE_AFTER_S`.

The guarantee differs by storage:
- Local and network file systems: the lock file is created with ``O_CREAT | O_EXCL``, which is
  atomic; exactly one of any number of simultaneous runs gets it.
- Object stores (S3, GCS, Azure) have no exclusive create through fsspec: the lock object is written
  only when none (or a stale one) is there, then read back after :data:`SETTLE_S` seconds; the run
  whose run id is read back holds it. Runs started more than :data:`SETTLE_S` seconds apart are always
  told apart; two started within that window may, rarely, both proceed (the stores are strongly
  consistent, so only a write landing between the other's write and its read-back does this).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from pipeline.storage import is_local, join_uri, url_to_fs

log = logging.getLogger("pipeline")

LOCK_FILE = ".sdedit.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 180.0
SETTLE_S = 1.0


class OutputLockedError(ValueError):
    """Another run holds the output folder."""


class OutputLock:
    """``with OutputLock(out_uri, options):`` holds OUT for the block; raises :class:`OutputLockedError`."""

    def __init__(self, out_uri: str, options: Mapping[str, Any] | None = None, *,
                 heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S) -> None:
        self.out_uri = out_uri
        self.fs, root = url_to_fs(out_uri, options)
        self.path = join_uri(root, LOCK_FILE)
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "run_id": uuid.uuid4().hex[:12],
                       "started_at": _now()}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        root = self.path.rsplit("/", 1)[0]
        self.fs.makedirs(root, exist_ok=True)
        held = self._read()
        if held is not None:
            if not self._stale(held):
                raise OutputLockedError(f"output.uri: {self.out_uri} is in use by another run: {_describe(held)}; "
                                        f"wait for it to end, or remove {LOCK_FILE} there if that run is gone")
            log.warning("output lock: taking over a stale lock (%s)", _describe(held))
            self._remove()
        if is_local(self.fs):
            self._create_exclusive()
        else:
            self._write()
            time.sleep(SETTLE_S)
            held = self._read()
            if held is None or held.get("run_id") != self.record["run_id"]:
                raise OutputLockedError(f"output.uri: {self.out_uri} was taken by another run starting at the "
                                        f"same moment: {_describe(held or {})}")
        self._beat = threading.Thread(target=self._heartbeat, name="sdedit-lock-heartbeat", daemon=True)
        self._beat.start()

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
        held = self._read()
        if held is not None and held.get("run_id") == self.record["run_id"]:
            self._remove()

    # -- internals ---------------------------------------------------------------------------
    def _create_exclusive(self) -> None:
        data = self._payload()
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise OutputLockedError(f"output.uri: {self.out_uri} was taken by another run starting at the same "
                                    f"moment: {_describe(self._read() or {})}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    def _payload(self) -> bytes:
        return json.dumps({**self.record, "heartbeat_at": time.time()}).encode()

    def _write(self) -> None:
        if is_local(self.fs):  # replace in place: the lock must never be absent while held
            tmp = f"{self.path}.{self.record['run_id']}.tmp"
            with open(tmp, "wb") as f:
                f.write(self._payload())
            os.replace(tmp, self.path)
            return
        with self.fs.open(self.path, "wb") as f:
            f.write(self._payload())

    def _read(self) -> dict[str, Any] | None:
        try:
            with self.fs.open(self.path, "rb") as f:
                return json.loads(f.read() or b"{}")
        except FileNotFoundError:
            return None
        except ValueError:  # a torn or foreign file: treat as a lock of unknown age
            return {"heartbeat_at": 0.0}

    def _remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path)
        if not is_local(self.fs):
            self.fs.invalidate_cache(self.path)

    def _stale(self, held: Mapping[str, Any]) -> bool:
        silent = time.time() - float(held.get("heartbeat_at") or 0.0) > self.stale_after_s
        if held.get("host") == self.record["host"] and isinstance(held.get("pid"), int):
            return silent or not _alive(held["pid"])  # a reused pid still stops beating
        return silent

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                held = self._read()
                if held is not None and held.get("run_id") != self.record["run_id"]:
                    log.warning("output lock: %s now names another run (%s)", self.path, _describe(held))
                    return
                self._write()
            except Exception as e:  # noqa: BLE001 - a missed beat only makes the lock look older
                log.warning("output lock: heartbeat failed (%s: %s)", type(e).__name__, e)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _describe(held: Mapping[str, Any]) -> str:
    if not held.get("host"):
        return "an unreadable lock file"
    age = time.time() - float(held.get("heartbeat_at") or 0.0)
    return (f"host {held.get('host')}, pid {held.get('pid')}, started {held.get('started_at')}, run "
            f"{held.get('run_id')}, last heartbeat {age:.0f} s ago")
