"""SIEM delivery: findings leave through a SQL outbox, rendered per sink, retried under one
policy, dead-lettered with a reason when they cannot be delivered, and redriven on demand.

Boundaries (one type each): a stored finding's OCSF document -> :class:`Delivery` (what a sink is
asked to send) -> :class:`Outcome` (what happened to it). Modules: ``config`` (sink settings),
``model`` (the types), ``retry`` (the one retry policy), ``renderings`` (OCSF, ECS, Splunk HEC,
CEF, LEEF), ``sinks`` (one module per product), ``outbox`` and ``worker`` (the delivery loop).
"""
