"""Output names: a file name for every (id, sample) that is safe on any file system or object store.

Ids come from users' manifests and may hold slashes, ``..``, spaces, unicode or be very long. A
readable stem is kept where possible; whenever the id had to be changed (or differs only by case,
which case-insensitive file systems would merge), a short hash of the exact id keeps names unique.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
MAX_STEM = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_ALREADY_SAFE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def id_hash(item_id: str, length: int = 10) -> str:
    return hashlib.blake2b(item_id.encode("utf-8"), digest_size=16).hexdigest()[:length]


def safe_stem(item_id: str) -> str:
    """``"shirts/Red Shirt #1"`` -> ``"shirts_Red_Shirt_1-3f2a9c01de"``; ``"tshirt-01"`` stays as is."""
    if _ALREADY_SAFE.match(item_id) and ".." not in item_id and len(item_id) <= MAX_STEM:
        return item_id
    ascii_form = unicodedata.normalize("NFKD", item_id).encode("ascii", "ignore").decode("ascii")
    stem = _UNSAFE.sub("_", ascii_form).strip("._-")
    stem = re.sub(r"\.{2,}", ".", stem)[: MAX_STEM - 11].rstrip("._-")
    return f"{stem}-{id_hash(item_id)}" if stem else f"id-{id_hash(item_id)}"


def image_relpath(item_id: str, sample: int, image_format: str) -> str:
    """Path of an output image relative to the output folder."""
    return f"images/{safe_stem(item_id)}_s{sample}.{EXTENSIONS[image_format]}"

