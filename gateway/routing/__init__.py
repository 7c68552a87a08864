"""Routing: which deployments serve a model name (``resolve``), the group at run time (``plan``: choice,
budgets, breakers per deployment in ``breaker``), and the attempts (``router``: failover, hedging)."""
