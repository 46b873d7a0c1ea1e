"""Redaction: keeps credentials out of everything the job writes (job.json, the index, logs).

Storage options carry cloud credentials; the resolved spec is written next to the outputs, which
are often shared. So anything that looks like a secret is replaced by a marker before it is written,
and credentials embedded in URIs (``scheme://user:password@host/...``) are stripped.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***redacted***"

# Substrings of option names that carry credentials in fsspec back ends (s3fs, gcsfs, adlfs, http...).
_SECRET_WORDS = (
    "key", "secret", "token", "password", "passwd", "credential", "auth", "signature", "connection",
    "private", "session", "sas", "cookie", "bearer",
)
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")
_USERINFO_ANYWHERE = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]*@")


def is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def strip_userinfo(uri: str) -> str:
    """``s3://AKIA:xyz@bucket/k`` -> ``s3://***redacted***@bucket/k``; other strings unchanged."""
    return _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", uri)


def redact_text(text: str) -> str:
    """Free text (an error message, a traceback) with every ``scheme://user:password@`` redacted."""
    return _USERINFO_ANYWHERE.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)


def redact(value: Any, *, key: str | None = None) -> Any:
    """A deep copy of ``value`` with secret-named entries and URI credentials replaced."""
    if key is not None and is_secret_name(key) and value is not None and not isinstance(value, bool):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, key=str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return strip_userinfo(value)
    return value


def redact_argv(argv: list[str]) -> list[str]:
    """Command-line words with the values of secret-named ``--set a.b=value`` overrides redacted."""
    cleaned = []
    for word in argv:
        key, sep, _ = word.partition("=")
        name = key.rsplit(".", 1)[-1]
        cleaned.append(f"{key}={REDACTED}" if sep and is_secret_name(name) else strip_userinfo(word))
    return cleaned
