"""The one HTTP client for control-plane calls: health probes, restores, stops, status and
list calls, fan-out, webhook deliveries and alerts (``HttpTransport``)."""

from router.transport.http import HttpTransport, Response, Transport

__all__ = ["HttpTransport", "Response", "Transport"]
