"""The outbox: queued sends, paced per session, that survive router, worker and instance
death (issue 16; work in progress: the rules and the config so far)."""
