"""Settings declared as models, for both programs: the frozen base, the field types they
share, environment values parsed into declared types, and pydantic's errors turned into
one line per problem that names its key.

YAML values must already have the declared type (a quoted ``"4"`` is not a number, ``no``
is not a boolean); environment variables are text, so :func:`apply_environment` parses
them into the declared type first. Unknown keys are refused with the closest known key
as a suggestion. Cross-field checks are model validators that raise :class:`Problems`,
each problem at the key it is about.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError, core_schema

from egress.kernel.durations import parse_duration

Loc = tuple[str | int, ...]

MASK: Final = "**********"
MANY_PROBLEMS: Final = "settings_problems"  # error type of :class:`Problems`
CHOICE: Final = "settings_choice"  # error type of a tagged union whose tag is missing


class SettingsError(ValueError):
    """The settings are invalid. ``problems`` holds one line per problem, each naming its key."""

    def __init__(self, problems: Sequence[str], *, heading: str | None = None) -> None:
        self.problems = tuple(dict.fromkeys(problems))  # one line per problem, in order found
        lines = "\n  - ".join(self.problems)
        if heading:
            text = f"{heading}:\n  - {lines}"
        elif len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} problems:\n  - {lines}"
        super().__init__(text)


class Secret:
    """A value read from a file or the environment that must never reach a log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself: call only where it is handed to the library that needs it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    @classmethod
    def __get_pydantic_core_schema__(cls, _source: Any, _handler: Any) -> core_schema.CoreSchema:
        # Only a Secret is a Secret: a plain string in a config is refused where one is expected.
        return core_schema.is_instance_schema(cls)


class SettingsModel(BaseModel):
    """Base of every settings model: frozen, strictly typed, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Problems:
    """Problems a model validator finds, each at the key it is about, raised together."""

    def __init__(self) -> None:
        self._found: list[tuple[Loc, str]] = []

    def add(self, *loc: str | int, message: str) -> None:
        """Record ``message`` about the key at ``loc`` (relative to the validated model)."""
        self._found.append((loc, message))

    def raise_any(self) -> None:
        """Raise what was recorded, if anything (pydantic adds the model's own location)."""
        if self._found:
            raise PydanticCustomError(
                MANY_PROBLEMS, "{count} problems", {"count": len(self._found), "problems": tuple(self._found)}
            )


@dataclass(frozen=True)
class ValidatedAs:
    """``Annotated`` marker: validate the input as ``declared`` (a settings model, a mapping
    type), then turn the result into the annotated type with ``build`` (default: call the
    annotated type with the model's fields). Problems keep the keys of ``declared``."""

    declared: Any
    build: Callable[[Any], Any] | None = None

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        def unpack(value: Any) -> Any:
            # What the annotated type already holds goes back to the declared shape.
            if is_dataclass(value) and not isinstance(value, type):
                return asdict(value)
            return dict(value) if isinstance(value, tuple) else value

        def build(value: Any) -> Any:
            return self.build(value) if self.build is not None else source(**dict(value))

        return core_schema.chain_schema(
            [
                core_schema.no_info_plain_validator_function(unpack),
                handler.generate_schema(self.declared),
                core_schema.no_info_plain_validator_function(build),
            ]
        )


# -- field types both programs use ------------------------------------------------------


def _path(value: Any) -> Path:
    if isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a path, got {value!r}")
    return Path(value)


def absolute_path(value: Any) -> Path:
    """An absolute path without ``..``, normalised; ``ValueError`` saying what is wrong otherwise."""
    path = _path(value)
    if not path.is_absolute():
        raise ValueError(f"must be an absolute path, got {str(value)!r}")
    if ".." in path.parts:
        raise ValueError(f"must not contain '..', got {str(value)!r}")
    return Path(os.path.normpath(path))


def _regex(value: Any) -> re.Pattern[str]:
    if isinstance(value, re.Pattern):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be a regular expression string, got {value!r}")
    try:
        return re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc


_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")


def _table_name(value: Any) -> Any:
    if isinstance(value, str) and not _TABLE_NAME.match(value):
        raise ValueError(
            f"must be a DynamoDB table name (3-255 letters, digits, '_', '-', '.'), got {value!r}"
        )
    return value


_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}$")


def _topic_arn(value: Any) -> Any:
    if isinstance(value, str) and not _TOPIC_ARN.match(value):
        raise ValueError(
            f"must be the ARN of a standard SNS topic (arn:aws:sns:REGION:ACCOUNT:NAME), got {value!r}"
        )
    return value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def as_tuple(value: Any) -> Any:
    """YAML lists into the tuples frozen settings hold (anything else is left to the type)."""
    return tuple(value) if isinstance(value, list) else value


DURATION: Final = BeforeValidator(parse_duration)
"""Marks a number of seconds written as ``500ms``, ``2s``, ``10m``, ``1h30m``, ``1d`` or a number."""

PathValue = Annotated[Path, BeforeValidator(_path)]
AbsolutePath = Annotated[Path, BeforeValidator(absolute_path)]
Regex = Annotated[re.Pattern[str], PlainValidator(_regex)]
TableName = Annotated[str, BeforeValidator(_table_name)]
TopicArn = Annotated[str, BeforeValidator(_topic_arn)]
"""The SNS topic completion events go to (DESIGN §12)."""
Port = Annotated[int, Field(ge=0, le=65535)]
HostName = Annotated[str, Field(min_length=1)]
LogFormat = Literal["json", "console"]
GetStrategy = Annotated[Literal["ranged", "single"], BeforeValidator(_lower)]
LogLevel = Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)]


# -- the environment --------------------------------------------------------------------


def apply_environment(
    document: dict[str, Any],
    environ: Mapping[str, str],
    variables: Iterable[tuple[str, Loc]],
    *,
    root: type[BaseModel],
) -> tuple[dict[Loc, str], list[str]]:
    """Lay environment values over ``document`` (they win), each parsed into the declared
    type of the key it sets; later variables in ``variables`` win over earlier ones.

    Returns where each value came from (key path → ``NAME='text'``, to name it in problems)
    and one line per variable whose text does not parse. Empty variables are unset.
    """
    origins: dict[Loc, str] = {}
    problems: list[str] = []
    for name, path in variables:
        text = environ.get(name, "")
        field = field_at(root, path)
        if not text or field is None:
            continue
        annotation: Any = (
            Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        )
        try:
            value = TypeAdapter(annotation).validate_python(text, strict=False)  # text: parse it
        except ValidationError as exc:
            for error in exc.errors():
                message = describe(root, {**error, "loc": path + tuple(error["loc"])})
                problems.append(f"{name}={text!r}: {message}")
            continue
        if _place(document, path, value):
            origins[path] = f"{name}={text!r}"
    return origins, problems


def _place(document: dict[str, Any], path: Loc, value: Any) -> bool:
    node = document
    for part in path[:-1]:
        if node.get(str(part)) is None:  # absent, or an empty YAML section
            node[str(part)] = {}
        child = node[str(part)]
        if not isinstance(child, dict):
            return False  # the file has something else there: its own problem is reported
        node = child
    node[str(path[-1])] = value
    return True


def copy_document(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a parsed YAML mapping, safe to lay environment values over."""
    return {str(key): copy.deepcopy(value) for key, value in raw.items()}


# -- problems, in our words --------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One problem: the key path it is about and what is wrong, in our words."""

    loc: Loc
    message: str
    kind: str


def problems_of(exc: ValidationError, *, root: type[BaseModel]) -> list[Problem]:
    """pydantic's errors for ``root`` as problems (several where a model validator found several)."""
    found: list[Problem] = []
    for error in exc.errors():
        loc = tuple(part for part in error["loc"] if part != "[key]")  # a dict key's own error
        if error["type"] == "too_short" and len(error["input"]) >= error["ctx"]["min_length"]:
            continue  # too few items were valid: each invalid one has its own problem
        if error["type"] == MANY_PROBLEMS:
            found += [Problem(loc + sub, message, MANY_PROBLEMS) for sub, message in error["ctx"]["problems"]]
        else:
            found.append(Problem(loc, describe(root, {**error, "loc": loc}), error["type"]))
    return found


def key_path(loc: Loc, *, prefix: str = "") -> str:
    """``routes[0].actions[1].copy`` from ``("routes", 0, "actions", 1, "copy")``."""
    text = prefix
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


_TEMPLATES = {
    "int_type": "must be a whole number, got {got}",
    "int_parsing": "must be a whole number, got {got}",
    "int_from_float": "must be a whole number, got {got}",
    "float_type": "must be a number, got {got}",
    "float_parsing": "must be a number, got {got}",
    "bool_type": "must be true or false, got {got}",
    "bool_parsing": "must be true or false, got {got}",
    "string_type": "must be a string, got {got}",
    "string_too_short": "must not be empty",
    "dict_type": "must be a mapping, got {type}",
    "model_type": "must be a mapping, got {type}",
    "model_attributes_type": "must be a mapping, got {type}",
    "tuple_type": "must be a list, got {type}",
    "list_type": "must be a list, got {type}",
    CHOICE: "{msg}, got {got}",
}
_BOUNDS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def describe(root: type[BaseModel], error: ErrorDetails) -> str:
    """What is wrong, in our words, for one of pydantic's errors about a key of ``root``."""
    kind, loc, value = error["type"], tuple(error["loc"]), error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "missing" or (kind == "too_short" and ctx.get("min_length") == 1):
        field = field_at(root, loc)
        return f"required: {field.description}" if field is not None and field.description else "required"
    if kind == "extra_forbidden":
        known = _names(model_at(root, loc[:-1]))
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        return "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
    if kind in _BOUNDS:
        return _bounds(field_at(root, loc), ctx, value)
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"]))
    if kind == "literal_error":
        return f"must be {str(ctx.get('expected', '')).replace(chr(39), '')}, got {_short(value)}"
    template = _TEMPLATES.get(kind)
    if template is not None:
        return template.format(got=_short(value), type=type(value).__name__, msg=error["msg"])
    return error["msg"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(value: Any, unit: str) -> str:
    return f"{value:g}{unit}" if isinstance(value, float) else f"{value}{unit}"


def _bounds(field: FieldInfo | None, ctx: Mapping[str, Any], value: Any) -> str:
    limits: dict[str, Any] = dict(ctx)
    unit = ""
    if field is not None:
        unit = "s" if DURATION in field.metadata else ""
        for item in field.metadata:
            if isinstance(item, Ge | Gt | Le | Lt):
                limits.update(
                    {name: getattr(item, name) for name in ("ge", "gt", "le", "lt") if hasattr(item, name)}
                )
    if "ge" in limits and "le" in limits:
        text = f"between {_number(limits['ge'], unit)} and {_number(limits['le'], unit)}"
    else:
        words = {"ge": "at least", "gt": "more than", "le": "at most", "lt": "less than"}
        text = " and ".join(f"{words[k]} {_number(limits[k], unit)}" for k in words if k in limits)
    got = _number(value, unit) if isinstance(value, int | float) else _short(value)
    return f"must be {text}, got {got}"


# -- finding the declaration behind a location -------------------------------------------


def field_at(root: type[BaseModel], loc: Loc) -> FieldInfo | None:
    """The declared field at ``loc`` (a key path into ``root``), if the path leads to one."""
    if not loc:
        return None
    for kind in _below(root, loc[:-1]):
        if _is_model(kind) and isinstance(loc[-1], str):
            field = _field(kind, loc[-1])
            if field is not None:
                return field
    return None


def model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model whose keys ``loc`` points into, if any."""
    return next((kind for kind in _below(root, loc) if _is_model(kind)), None)


def _below(root: type[BaseModel], loc: Loc) -> list[Any]:
    kinds: list[Any] = [root]
    for part in loc:
        kinds = [found for kind in kinds for found in _step(kind, part)]
    return [alternative for kind in kinds for alternative in _alternatives(kind)]


def _step(annotation: Any, part: str | int) -> list[Any]:
    found: list[Any] = []
    for kind in _alternatives(annotation):
        if _is_model(kind):
            field = _field(kind, part) if isinstance(part, str) else None
            if field is not None:
                found.append(_declared(field))
            elif getattr(kind, "kind", None) == part:  # the tag of a tagged union member
                found.append(kind)
        elif get_origin(kind) in (tuple, list) and isinstance(part, int):
            found.append(get_args(kind)[0])
        elif get_origin(kind) is dict:
            found.append(get_args(kind)[1])
    return found


def _alternatives(annotation: Any) -> list[Any]:
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *metadata = get_args(annotation)
        marker = next((m for m in metadata if isinstance(m, ValidatedAs)), None)
        return _alternatives(marker.declared) if marker is not None else _alternatives(base)
    if origin in (Union, UnionType):
        return [kind for member in get_args(annotation) for kind in _alternatives(member)]
    return [annotation]


def _declared(field: FieldInfo) -> Any:
    marker = next((m for m in field.metadata if isinstance(m, ValidatedAs)), None)
    return marker.declared if marker is not None else field.annotation


def _is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def _field(model: type[BaseModel], key: str) -> FieldInfo | None:
    for name, field in model.model_fields.items():
        if key in (name, field.alias, field.validation_alias):
            return field
    return None


def _names(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [
        field.validation_alias if isinstance(field.validation_alias, str) else name
        for name, field in model.model_fields.items()
    ]
