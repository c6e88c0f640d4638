"""The shared consumer machinery: batches, inbox, outbox, retries, dead letters."""

from workers.runtime.consumer import Runtime
from workers.runtime.errors import BillstreamError, PermanentError, RetryableError
from workers.runtime.tx import Batch, Message, Tx

__all__ = [
    "Batch",
    "BillstreamError",
    "Message",
    "PermanentError",
    "RetryableError",
    "Runtime",
    "Tx",
]
