"""Writing rows with a record of who did it: edits, approvals, switching a row on and off.

The caller's identity is its STS identity (``GetCallerIdentity``), never a name it gives
itself. An edit that changes what a row delivers where records its editor and drops the
row's approval; switching a row on or off is recorded apart and keeps the approval, so the
approver may pause a row without voiding their own approval.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from egress.errors import error_code, translate_client_error
from egress.route_policy import approval_digest, same_identity
from egress.routing import DEFAULT_SFT_ROOT, Route, get_route, route_key

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sts import STSClient


class RouteEditRefused(Exception):
    """An approval or a switch that cannot be made; the message says why."""


def caller_identity(sts: STSClient) -> str:
    """The caller's ARN, as STS knows it (an assumed role's ARN names the session)."""
    try:
        return str(sts.get_caller_identity()["Arn"])
    except (ClientError, BotoCoreError) as exc:
        raise translate_client_error(exc, doing="asking STS who the caller is") from exc


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def without_records(route: Route) -> Route:
    """``route`` with no approval: approvals come from ``egress routes approve`` only."""
    return replace(route, approved_by="", approved_at="", approved_digest="")


def stamped(new: Route, *, current: Route | None, editor: str, at: str) -> Route:
    """``new`` as ``editor`` writes it over ``current``: who edited, and what happens to the approval.

    Delivering columns changed (or a new row): ``updated_by``/``updated_at`` are the editor
    and the approval is dropped. Unchanged: the row's records are kept as they were (a
    switch on or off is recorded as such).
    """
    new = without_records(new)
    if current is None or approval_digest(current) != approval_digest(new):
        return replace(
            new,
            updated_by=editor,
            updated_at=at,
            enabled_changed_by=current.enabled_changed_by if current else "",
            enabled_changed_at=current.enabled_changed_at if current else "",
        )
    kept = replace(
        new,
        approved_by=current.approved_by,
        approved_at=current.approved_at,
        approved_digest=current.approved_digest,
        updated_by=current.updated_by,
        updated_at=current.updated_at,
        enabled_changed_by=current.enabled_changed_by,
        enabled_changed_at=current.enabled_changed_at,
    )
    if new.enabled != current.enabled:
        kept = replace(kept, enabled_changed_by=editor, enabled_changed_at=at)
    return kept


def _update(dynamodb: DynamoDBClient, *, refused: str, doing: str, **request: Any) -> dict[str, Any]:
    """A conditional ``UpdateItem``: :class:`RouteEditRefused` (``refused``) when its condition fails."""
    try:
        return dict(dynamodb.update_item(**request))
    except ClientError as exc:
        if error_code(exc) == "ConditionalCheckFailedException":
            raise RouteEditRefused(refused) from exc
        raise translate_client_error(exc, doing=doing) from exc
    except BotoCoreError as exc:
        raise translate_client_error(exc, doing=doing) from exc


def approve(
    dynamodb: DynamoDBClient,
    table: str,
    *,
    source_prefix: str,
    pipeline_name: str,
    approver: str,
    sft_root: Path = DEFAULT_SFT_ROOT,
) -> Route:
    """Record ``approver``'s approval of the row as it is now; returns the row approved.

    Refused (:class:`RouteEditRefused`) for a missing row, a row that needs no approval, an
    invalid row, or an approver who is the row's last editor. The write is conditional on
    the row not having been edited since it was read.
    """
    route = get_route(dynamodb, table, source_prefix=source_prefix, pipeline_name=pipeline_name)
    name = f"({source_prefix!r}, {pipeline_name!r})"
    if route is None:
        raise RouteEditRefused(f"no row {name} in {table}")
    if not route.approval_required:
        raise RouteEditRefused(f"row {name} does not require approval (approval_required is not true)")
    if same_identity(approver, route.updated_by):
        raise RouteEditRefused(
            f"row {name} was last edited by {route.updated_by}, the caller: someone else must approve it"
        )
    problems = route.problems(sft_root=sft_root)
    if problems:
        raise RouteEditRefused(f"row {name} is invalid, fix it first: {'; '.join(problems)}")
    values = {
        ":by": {"S": approver},
        ":at": {"S": now_iso()},
        ":digest": {"S": approval_digest(route)},
    }
    condition = "attribute_exists(source_prefix) AND "
    if route.updated_at:
        condition += "updated_at = :seen"
        values[":seen"] = {"S": route.updated_at}
    else:
        condition += "attribute_not_exists(updated_at)"
    _update(
        dynamodb,
        refused=f"row {name} was edited while it was being approved: look again",
        doing=f"approving a row of {table}",
        TableName=table,
        Key=route_key(source_prefix, pipeline_name),
        UpdateExpression="SET approved_by = :by, approved_at = :at, approved_digest = :digest",
        ConditionExpression=condition,
        ExpressionAttributeValues=values,
    )
    return replace(
        route, approved_by=approver, approved_at=values[":at"]["S"], approved_digest=values[":digest"]["S"]
    )


def set_enabled(
    dynamodb: DynamoDBClient,
    table: str,
    *,
    source_prefix: str,
    pipeline_name: str,
    enabled: bool,
    editor: str,
) -> bool:
    """Switch a row on or off (its approval stays); returns whether it was enabled before."""
    response = _update(
        dynamodb,
        refused=f"no row ({source_prefix!r}, {pipeline_name!r}) in {table}",
        doing=f"switching a row of {table}",
        TableName=table,
        Key=route_key(source_prefix, pipeline_name),
        UpdateExpression="SET enabled = :on, enabled_changed_by = :by, enabled_changed_at = :at",
        ConditionExpression="attribute_exists(source_prefix)",
        ExpressionAttributeValues={":on": {"BOOL": enabled}, ":by": {"S": editor}, ":at": {"S": now_iso()}},
        ReturnValues="ALL_OLD",
    )
    before = Route.from_item(response.get("Attributes", {}) or {"source_prefix": {"S": source_prefix}})
    return before.enabled
