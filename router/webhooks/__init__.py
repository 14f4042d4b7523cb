"""Durable webhook relay: instances post webhooks to the router, which stores them (Redis
Streams, or memory) and delivers them to the configured targets, at least once, in order
per session, with retries, a circuit breaker per target, a dead list and replay.

Modules: ``relay`` (the facade the proxy and admin use), ``worker`` (delivery per target),
``queue_redis`` / ``queue_memory`` (storage), ``delivery`` (one HTTP attempt),
``schedule`` (retry delays, breaker; pure), ``filters`` (event patterns, queue keys; pure),
``batcher`` (coalesced writes); Redis clients come from ``router.store.redis_client``.
"""

from router.webhooks.delivery import sign
from router.webhooks.model import Counters, InboundEvent
from router.webhooks.relay import WebhookRelay
from router.webhooks.schedule import Breaker, retry_delay

__all__ = ["Breaker", "Counters", "InboundEvent", "WebhookRelay", "retry_delay", "sign"]
