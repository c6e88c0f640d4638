"""The shared consumer machinery: batches, inbox, outbox, retries, dead letters."""

from workers.runtime.consumer import Runtime
from workers.runtime.errors import BillstreamError, PermanentError, RetryableError
from workers.runtime.jobs import Item, Jobs
from workers.runtime.tx import Batch, Message, Tx

__all__ = [
    "Batch",
    "BillstreamError",
    "Item",
    "Jobs",
    "Message",
    "PermanentError",
    "RetryableError",
    "Runtime",
    "Tx",
]
