"""Virtual keys: created, updated and revoked in the database, looked up from each worker's memory.

``store`` is the database side (create, list, update, revoke; only the
secret's sha256 is stored), ``fields`` checks what an operator sends (admin
API and CLI alike), ``cache`` is the per-worker copy the request path reads.
"""

from gateway.keys.cache import KeyCache
from gateway.keys.store import KeyStore, hash_secret

__all__ = ["KeyCache", "KeyStore", "hash_secret"]
