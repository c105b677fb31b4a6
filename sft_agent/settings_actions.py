"""What a route does with each ready file, as the config declares it: ``http``, ``copy``
and ``rename`` actions, each written as a one-key mapping (``- copy: {destination: …}``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, ValidationInfo, model_validator

from egress.settings_schema import CHOICE, AbsolutePath, Problems, Regex, SettingsModel
from sft_agent.settings_fields import (
    ConnectTimeout,
    FilenameHeader,
    Headers,
    HttpsUrl,
    Method,
    ReadTimeout,
    SecretHeaders,
    context_of,
)

_GROUP_REF = re.compile(r"\\(?:g<([^>]*)>|(\d{1,2}))")


def _unwrap(kind: str, data: Any) -> Any:
    """``{kind: body}`` → ``body``: an action is written under the key naming its kind."""
    if isinstance(data, Mapping) and len(data) == 1 and kind in data:
        return data[kind] if data[kind] is not None else {}
    return data


class HttpAction(SettingsModel):
    """Stream the file to ``url`` (POST: as is; PUT: the file name appended, a collection)."""

    kind: ClassVar[Literal["http"]] = "http"
    url: HttpsUrl = Field(description="the https:// URL to send to")
    method: Method = "POST"
    headers: Headers = ()
    secret_headers: SecretHeaders = ()
    filename_header: FilenameHeader = "Filename"
    connect_timeout: ConnectTimeout = 10.0
    read_timeout: ReadTimeout = 60.0

    @model_validator(mode="before")
    @classmethod
    def _inherit(cls, data: Any, info: ValidationInfo) -> Any:
        """Timeouts the action leaves out come from ``defaults:``."""
        data = _unwrap(cls.kind, data)
        if not isinstance(data, Mapping):
            return data
        defaults = context_of(info).defaults
        return {key: defaults[key] for key in ("connect_timeout", "read_timeout") if key in defaults} | dict(
            data
        )


class CopyAction(SettingsModel):
    """Copy the file into another folder (temp name, fsync, rename: never seen partial)."""

    kind: ClassVar[Literal["copy"]] = "copy"
    destination: AbsolutePath = Field(description="the folder to copy into")

    @model_validator(mode="before")
    @classmethod
    def _body(cls, data: Any) -> Any:
        return _unwrap(cls.kind, data)


class RenameAction(SettingsModel, validate_by_name=True, validate_by_alias=True):
    """Change the name the following actions use: ``pattern.sub(replacement, name)``.

    The replacement may hold the date placeholders of
    :data:`egress.kernel.placeholders.PLACEHOLDERS`, resolved (UTC) from the time the file
    was first claimed, so retries keep the name. The config calls ``pattern`` ``regex``.
    """

    kind: ClassVar[Literal["rename"]] = "rename"
    pattern: Regex = Field(validation_alias="regex", description="the pattern to replace in the file name")
    replacement: str = Field(description="a string")

    @model_validator(mode="before")
    @classmethod
    def _body(cls, data: Any) -> Any:
        return _unwrap(cls.kind, data)

    @model_validator(mode="after")
    def _check_group_references(self) -> RenameAction:
        problems = Problems()
        for match in _GROUP_REF.finditer(self.replacement):
            named, numbered = match.groups()
            ref = named if named is not None else numbered
            if ref.isdigit() and int(ref) > self.pattern.groups:
                message = f"replacement refers to group {ref}, the pattern has {self.pattern.groups}"
                problems.add("replacement", message=message)
            elif not ref.isdigit() and ref not in self.pattern.groupindex:
                message = f"replacement refers to group {ref!r}, which the pattern does not define"
                problems.add("replacement", message=message)
        problems.raise_any()
        return self


Action = HttpAction | CopyAction | RenameAction


def _kind_of(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return next(iter(value)) if len(value) == 1 else None
    return getattr(value, "kind", None)


ActionEntry = Annotated[
    Annotated[HttpAction, Tag("http")]
    | Annotated[CopyAction, Tag("copy")]
    | Annotated[RenameAction, Tag("rename")],
    Discriminator(
        _kind_of,
        custom_error_type=CHOICE,
        custom_error_message="must be a mapping with exactly one of http, copy, rename",
    ),
]
"""One entry of a route's ``actions:`` list, validated as the kind its key names."""
