"""The data path: the proxy port."""

from router.proxy.server import ProxyServer

__all__ = ["ProxyServer"]
