"""Delivery: the outbox, the dispatcher that drains it, channel providers and message texts."""
