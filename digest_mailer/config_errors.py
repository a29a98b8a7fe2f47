"""Turning pydantic's findings into one-line errors an operator can act on, and the table of
every documented key."""

from __future__ import annotations

import difflib
from typing import Any, get_args, get_origin

from pydantic import BaseModel


def problems_hint(count: int) -> str:
    """Printed after the problems: say how many there were, not that more follow."""
    many = f"{count} problems above; " if count > 1 else ""
    return many + "every key is documented in config.example.toml"


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def describe_error(err: Any, name: str, root: type[BaseModel]) -> list[str]:
    """One pydantic error as lines like `file: key.path: value is not ... (did you mean ...)`."""
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    # Annotated validators and unions add their own names to the location; drop them.
    loc = tuple(p for p in loc
                if p not in ("str", "int", "list[str]", "constrained-str", "[key]"))
    path = _key_path(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        return [f"{name}: {path}: unknown key{_did_you_mean(loc, root)}"]
    if kind == "missing":
        return [f"{name}: {path}: missing required key"]
    msg = err["msg"]
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        if not loc:  # a whole-config check: each line already names its key
            return [f"{name}: {line}" for line in msg.split("\n")]
        return [f"{name}: {path}: {msg}"]
    value = err.get("input")
    shown = f"{value!r}" if not isinstance(value, dict | list) else type(value).__name__
    return [f"{name}: {path}: {shown} is not valid: {msg[0].lower()}{msg[1:]}"]


def _did_you_mean(loc: tuple[Any, ...], root: type[BaseModel]) -> str:
    model = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        inner = _section_model(field.annotation) if field else None
        if inner is None:
            return ""
        model = inner
    keys = [f.alias or n for n, f in model.model_fields.items() if n not in ("base_dir", "path")]
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(keys)})"


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The settings model inside `Model`, `list[Model]` or `Model | None`, if any."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def settings_table(root: type[BaseModel]) -> dict[str, str]:
    """Every documented key path -> its help, for the example-config test."""
    table: dict[str, str] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for fname, field in model.model_fields.items():
            if fname in ("base_dir", "path"):
                continue
            key = prefix + (field.alias or fname)
            inner = _section_model(field.annotation)
            if inner is not None:
                walk(inner, key + ("[]." if get_origin(field.annotation) is list else "."))
            else:
                table[key] = field.description or ""

    walk(root, "")
    return table
