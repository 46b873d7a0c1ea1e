"""Built-in assets: the bundled score models and sample guides that ship inside the package.

A job names a bundled model by a bare name (``model.uri: fashion-mnist-ddpm``). The name is resolved
on each machine that loads it (driver and every actor), so a cluster whose nodes install the package
in different places still finds it.
"""

from __future__ import annotations

import re
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
MODELS_DIR = ASSETS_DIR / "models"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def builtin_models() -> list[str]:
    """Names of the bundled model folders that hold a loadable checkpoint config."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(
        p.name
        for p in MODELS_DIR.iterdir()
        if p.is_dir() and ((p / "config.json").exists() or (p / "model_index.json").exists())
    )


def looks_like_name(uri: str) -> bool:
    """A bare name (no slash, no scheme) refers to a bundled model; write ``./name`` for a folder."""
    return bool(_NAME.match(uri)) and "/" not in uri


def resolve_model_uri(uri: str) -> str:
    """Bundled model name -> its folder; anything else is returned unchanged (a checkpoint URI).

    A bare name that is not bundled is still returned unchanged so that the loader names it in its
    error; :func:`describe_unknown` gives the friendlier message used by validation.
    """
    if looks_like_name(uri) and (MODELS_DIR / uri).is_dir():
        return str(MODELS_DIR / uri)
    return uri


def model_name(uri: str) -> str:
    """Short model name for the index: the bundled name, or the last path component of the URI."""
    if looks_like_name(uri):
        return uri
    return uri.rstrip("/").rsplit("/", 1)[-1] or uri


def describe_unknown(uri: str) -> str | None:
    """An error message when ``uri`` is a bare name that is neither bundled nor a local folder."""
    if not looks_like_name(uri) or (MODELS_DIR / uri).is_dir() or Path(uri).exists():
        return None
    known = ", ".join(builtin_models()) or "none installed"
    return f"{uri!r} is not a bundled model (bundled: {known}); give a checkpoint path or URI"
