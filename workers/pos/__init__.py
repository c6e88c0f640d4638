"""Point-of-sale integration: adapters that read POS formats (one module per format in
``adapters/``), and the POS worker that turns receipts into usage events by each tenant's
mapping.

The face: what the ingress (and any other package) may import from POS."""

from workers.pos.adapters import Adapter
from workers.pos.adapters import adapters as formats
from workers.pos.adapters import get as format_of
from workers.pos.errors import AdapterError
from workers.pos.service import usage_source

__all__ = ["Adapter", "AdapterError", "format_of", "formats", "usage_source"]
