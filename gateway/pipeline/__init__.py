"""The request lifecycle every surface shares.

``admission`` (one stage from inbound bytes to a ``ChatRequest``) → ``pipeline``
(cache lookup, router, cache store) → the surface's relay → ``finish`` (the
listeners that run once per request), with ``outcome`` recording what happened.
"""
