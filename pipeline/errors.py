"""Item errors: one type for every reason an item becomes an error row, with its kind kept apart.

A bad item never stops the job: it becomes an error row whose ``error`` column reads
``"<kind>: <detail>"`` (``"missing guide: g.png not found"``) and whose ``error_kind`` column holds
the kind alone, which the summary counts failures by. Raising :class:`ItemError` is how any stage
says "this item failed, for this reason"; nothing parses the message back.
"""

from __future__ import annotations

# The kinds, in the words the index and the summary show (docs/reliability.md lists their causes).
KINDS = (
    "missing guide", "missing mask", "missing base", "missing overlay", "missing overlay mask",
    "missing original", "missing edited",
    "bad guide", "bad mask", "bad base", "bad overlay", "bad overlay mask", "bad original", "bad edited",
    "unreadable guide", "unreadable mask", "unreadable base", "unreadable overlay", "unreadable overlay mask",
    "unreadable original", "unreadable edited",
    "bad row", "bad override", "bad label", "bad composite", "bad stroke edit",
    "decode error", "write error", "bad parameters", "model error", "worker crash",
)


class ItemError(ValueError):
    """One item's failure: ``kind`` (one of :data:`KINDS`) and a human ``detail``."""

    def __init__(self, kind: str, detail: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown item error kind {kind!r}")
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")

    @property
    def message(self) -> str:
        return str(self)


def kind_of(message: str | None, kind: str | None = None) -> str:
    """The failure kind of an index row: its ``error_kind``, or for an index written before that
    column existed, the text before the message's first colon."""
    if kind:
        return kind
    return (message or "error").split(":", 1)[0].strip() or "error"
