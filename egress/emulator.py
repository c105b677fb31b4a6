"""Make the embedded moto server keep DynamoDB's one promise the ledger relies on.

DynamoDB applies a conditional write atomically: of two workers claiming the same
delivery at once, exactly one succeeds. moto 5's DynamoDB backend checks the condition
and then writes, with nothing in between to stop another request thread; measured here,
two concurrent claims on one row both succeeded in 18 of 40 tries. The local stack and
the tests run moto in-process, so this module serialises its DynamoDB writes with one
lock — which is what the real service guarantees per item.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

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
