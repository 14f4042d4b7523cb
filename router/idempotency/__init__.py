"""``Idempotency-Key`` on proxied POST and PATCH requests (contract: "Idempotency keys and
delivery tracking"): the rules (``model``), where the kept responses live (``store``,
``redis_store``); the proxy's thin layer is ``router.proxy.idempotent``."""
