"""Routing: which deployments serve a model name (``resolve``)."""
