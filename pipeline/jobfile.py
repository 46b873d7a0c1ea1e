"""Job files: YAML -> ``--set`` overrides -> a validated :class:`JobSpec`, or errors naming fields.

Kept apart from the spec models so that the models stay a plain description of the job, and so
that every way in (CLI, tests, notebooks) goes through the same override and error formatting.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.spec import JobSpec

_FIELD_PREFIX = re.compile(r"^([a-z_][a-z0-9_.]*): (.*)$", re.S)


class SpecError(ValueError):
    """A job spec that cannot run; ``problems`` holds ``(dotted.field, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{field}: {msg}" if field else msg for field, msg in problems))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a job file; a missing file or a YAML syntax error becomes a :class:`SpecError`."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SpecError([("", f"cannot read job file {path}: {e.strerror or e}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError([("", f"{path} is not valid YAML: {e}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError([("", f"{path}: the top level must be a mapping of sections")])
    return data


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides; values are YAML-parsed (``0.4`` float, ``[a, b]`` list, ``null``)."""
    result: dict[str, Any] = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise SpecError([("", f"--set {item!r}: expected dotted.name=value")])
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise SpecError([(key, f"--set value is not valid YAML: {e}")]) from None
        node = result
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError([(".".join(parts[: i + 1]), f"is not a section, cannot set {key}")])
            node = child
        node[parts[-1]] = value
    return result


def build_spec(data: Mapping[str, Any]) -> JobSpec:
    """Validate plain data into a :class:`JobSpec`, translating pydantic errors to dotted fields."""
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(_problems(e)) from None


def load_spec(path: str | Path, overrides: Iterable[str] = ()) -> JobSpec:
    """The whole way from a job file on disk to a validated spec; an unknown field says where it came
    from (the file, or which ``--set``)."""
    overrides = list(overrides)
    try:
        return build_spec(apply_overrides(read_yaml(path), overrides))
    except SpecError as e:
        given = {item.split("=", 1)[0].strip() for item in overrides}
        raise SpecError([(field, f"{msg} ({f'from --set {field}=...' if field in given else f'in {path}'})"
                          if msg.startswith("unknown field") else msg) for field, msg in e.problems]) from None


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    """One line per field; union branches of the same field are merged with 'or'.

    Values are never echoed: an invalid entry may be a credential.
    """
    merged: dict[str, list[str]] = {}
    for err in error.errors(include_input=False, include_url=False):
        path = _field_path(err["loc"])
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] == "extra_forbidden":
            msg = _unknown_field(err["loc"])
        match = _FIELD_PREFIX.match(msg)
        if match and err["type"] == "value_error":
            path = f"{path}.{match.group(1)}" if path else match.group(1)
            msg = match.group(2)
        bucket = merged.setdefault(path, [])
        if msg not in bucket:
            bucket.append(msg)
    return [(path, " or ".join(msgs)) for path, msgs in merged.items()]


def _unknown_field(loc: tuple[int | str, ...]) -> str:
    """'unknown field', with the closest real field of that section when one is close enough."""
    import difflib

    model: type[BaseModel] | None = JobSpec
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if model is not None else None
        annotation = field.annotation if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if model is not None:
        names = list(model.model_fields)
        for name, info in model.model_fields.items():
            choices = getattr(info.validation_alias, "choices", None) or []
            names += [c for c in choices if isinstance(c, str) and c != name]
        close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
        if close:
            prefix = ".".join(str(p) for p in loc[:-1])
            return f"unknown field; did you mean {prefix + '.' if prefix else ''}{close[0]}?"
    return "unknown field (check the spelling; see docs/pipeline.md or `sdedit fields` for the fields)"


def _field_path(loc: tuple[int | str, ...]) -> str:
    """Model field names and container keys/indices; pydantic's union branch tags are dropped."""
    parts: list[str] = []
    model: type[BaseModel] | None = JobSpec
    in_container = False
    for part in loc:
        if model is not None and isinstance(part, str):
            parts.append(part)  # a field, or the unknown name of an extra field
            field = model.model_fields.get(part)
            annotation = field.annotation if field else None
            is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
            nested = annotation if is_model else None
            in_container = nested is None
            model = nested
        elif isinstance(part, int) or (in_container and isinstance(part, str) and _is_key(part)):
            parts.append(str(part))
        # anything else is a union branch tag such as 'int' or 'tuple[int, int]'
    return ".".join(parts)


def _is_key(part: str) -> bool:
    type_tags = ("int", "str", "float", "bool", "list", "dict")
    return not any(ch in part for ch in "[](),") and part not in type_tags
