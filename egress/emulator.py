"""Make the embedded moto server keep DynamoDB's promises the worker relies on.

DynamoDB applies a conditional write atomically: of two workers claiming the same
delivery at once, exactly one succeeds. moto 5's DynamoDB backend checks the condition
and then writes, with nothing in between to stop another request thread; measured here,
two concurrent claims on one row both succeeded in 18 of 40 tries. The local stack and
the tests run moto in-process, so this module serialises its DynamoDB writes with one
lock — which is what the real service guarantees per item.

A routes lookup (PartiQL ``SELECT`` with key equalities) is a keyed read in DynamoDB, its
cost independent of every other table. moto answers each ``ExecuteStatement`` by converting
every item of every table on the server, so in a local stack that has run for a while
each lookup paid for the whole ledger (about 1.4 s for 5,000 rows elsewhere on the
server). :func:`make_moto_statements_read_their_own_table` shows a statement that names
one table only that table.
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any, cast


def prepare_embedded_moto() -> None:
    """Everything this module does to the moto server run in this process (call before serving)."""
    make_moto_dynamodb_writes_atomic()
    make_moto_statements_read_their_own_table()


_WRITES = (
    "put_item",
    "update_item",
    "delete_item",
    "batch_write_item",
    "transact_write_items",
    "execute_transaction",
)
_lock = threading.RLock()
_patched = False


def make_moto_dynamodb_writes_atomic() -> None:
    """Serialise moto's DynamoDB writes in this process (idempotent; call before serving)."""
    global _patched
    if _patched:
        return
    from moto.dynamodb.models import DynamoDBBackend

    for name in _WRITES:
        original = getattr(DynamoDBBackend, name, None)
        if original is None:
            continue
        setattr(DynamoDBBackend, name, _locked(original))
    _patched = True


def _locked(method: Any) -> Any:
    @functools.wraps(method)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _lock:
            return method(*args, **kwargs)

    return locked


# A statement reading one table, written as the worker writes it: SELECT … FROM "name" …
# (an index as "name"."index"); anything else goes to moto as it is.
_ONE_TABLE = re.compile(
    r'\s*SELECT\s[^"]*\sFROM\s+"([^"]+)"(?:\."[^"]+")?(?:\s+WHERE\s[^"]*)?\s*', re.IGNORECASE
)
_statements_patched = False


def make_moto_statements_read_their_own_table() -> None:
    """moto's ExecuteStatement converts only the table a one-table SELECT names (idempotent)."""
    global _statements_patched
    if _statements_patched:
        return
    from moto.dynamodb.models import DynamoDBBackend

    original = DynamoDBBackend.execute_statement

    @functools.wraps(original)
    def execute_statement(self: Any, statement: str, parameters: list[dict[str, Any]]) -> Any:
        match = _ONE_TABLE.fullmatch(statement)
        table = self.tables.get(match.group(1)) if match else None
        if table is None:
            return original(self, statement, parameters)
        return original(cast(Any, _OneTable(self, table)), statement, parameters)

    DynamoDBBackend.execute_statement = execute_statement  # type: ignore[method-assign]
    _statements_patched = True


class _OneTable:
    """The backend as ``execute_statement`` sees it, holding one table."""

    def __init__(self, backend: Any, table: Any) -> None:
        self._backend = backend
        self.tables = {table.name: table}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)
