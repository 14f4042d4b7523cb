"""The outbox: queued sends, paced per session, that survive router, worker and instance
death (README, "Sending campaigns"). Pure rules (``model``, ``pacing``, ``outcome``,
``turns``, ``routes``), the stores (``store``, ``redis_store``), the ``dispatcher`` that
sends, the ``service`` the proxy and admin ports call, and ``events``."""
