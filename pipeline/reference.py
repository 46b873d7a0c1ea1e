"""Field reference: the job-file fields, their types, defaults and meaning, generated from the spec.

Generated (``sdedit fields``, and pasted into docs/pipeline.md) so that the documentation cannot drift
from the models that validate job files.
"""

from __future__ import annotations

from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pipeline.spec import JobSpec


def iter_fields(model: type[BaseModel] = JobSpec, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted name, type, default, description) for every leaf field, depth first."""
    rows: list[tuple[str, str, str, str]] = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and name != "actors":
            rows.extend(iter_fields(annotation, f"{dotted}."))
            continue
        rows.append((dotted, _type_name(annotation), _default(info), info.description or ""))
    return rows


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return " | ".join(str(v) for v in get_args(annotation))
    if get_origin(annotation) in (Union, UnionType):  # int | Literal["auto"] -> "int | auto"
        return " | ".join(_type_name(a) for a in get_args(annotation))
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    return text.replace("typing.", "").replace("NoneType", "None").replace("ActorRange", "int | {min, max}")


def _default(info: Any) -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "required"
    value = info.default_factory() if info.default_factory is not None else info.default
    if isinstance(value, BaseModel):
        value = value.model_dump()
    return "null" if value is None else repr(value).replace("'", "")


def render_fields() -> str:
    """A Markdown table of every field."""
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, kind, default, doc in iter_fields():
        lines.append(f"| `{name}` | {kind.replace('|', chr(92) + '|')} | `{default}` | {doc} |")
    return "\n".join(lines)
