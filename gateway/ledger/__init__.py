"""The usage ledger: one row per chat request, written in batches off the request path.

``rows`` turns a finished request's ``Outcome`` into a row (the finish
listener), ``writer`` holds the bounded buffer and the one writer task per
worker, ``reports`` reads the daily roll-ups for ``/v1/usage``, ``/admin/usage``
and ``gateway usage``.
"""

from gateway.ledger.rows import Recorder
from gateway.ledger.writer import LedgerWriter

__all__ = ["LedgerWriter", "Recorder"]
