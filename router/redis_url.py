"""Store URLs: which forms ``store.url`` accepts, and ``redis+sentinel://``, which redis-py's
``from_url`` does not understand.

Here, outside both ``router.config`` and ``router.store``, so that the config loader can
validate a URL without importing the store, and the store can parse one without importing
the config loader. It imports nothing from redis-py.

``redis://``, ``rediss://`` and ``unix://`` go to redis-py as they are. The Sentinel form::

    redis+sentinel://[[username]:password@]host1[:port][,host2[:port]...]/service[/db]
        [?sentinel_password=PASSWORD]

- ``host:port`` pairs are Sentinels (port 26379 when omitted; IPv6 as ``[::1]:26379``);
- ``service`` is the monitored master's name (``sentinel monitor <service> ...``);
- ``db`` is the database number on the master (0 when omitted);
- ``username``/``password`` authenticate to the master (and its replicas), like the
  userinfo of a ``redis://`` URL; ``sentinel_password`` authenticates to the Sentinels
  themselves, for deployments that set ``requirepass`` on them.

Percent-encoding is undone in every part. Error messages never include the URL, which may
carry a password, and ``url_location`` describes one without its credentials.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

SENTINEL_SCHEME = "redis+sentinel"
PLAIN_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() == SENTINEL_SCHEME


def store_url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a ``store.url`` (a message that never quotes it), or
    None when the store can use it."""
    if is_sentinel_url(url):
        try:
            parse_sentinel_url(url)
        except ValueError as e:
            return str(e)
        return None
    if urlsplit(url).scheme not in PLAIN_SCHEMES:
        return "must be a redis://, rediss:// or unix:// URL"
    return None


def url_location(url: str) -> str:
    """Where ``url`` points, without user name, password nor query (which may hold one):
    for logs and reprs."""
    if is_sentinel_url(url):
        try:
            target = parse_sentinel_url(url)
        except ValueError:
            return f"{SENTINEL_SCHEME}://?"
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in target.sentinels)
        return f"{SENTINEL_SCHEME}://{hosts}/{target.service}/{target.db}"
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return f"unix://{parts.path}"
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # e.g. a port out of range: say nothing more
        return "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{'' if port is None else f':{port}'}{parts.path}"


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``url``; ``ValueError`` (whose message never quotes the URL) when malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != SENTINEL_SCHEME:
        raise ValueError("not a redis+sentinel:// URL")
    rest = rest.partition("#")[0]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_host_port(part) for part in hostlist.split(","))
    parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
    if not parts or not parts[0]:
        raise ValueError("redis+sentinel:// URL needs a service name: .../service_name[/db]")
    if len(parts) > 2:
        raise ValueError("redis+sentinel:// URL path must be /service_name[/db]")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ValueError("redis+sentinel:// URL: db must be a non-negative integer")
        db = int(parts[1])
    sentinel_password = None
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError("redis+sentinel:// URL: malformed query string") from None
    for key, values in params.items():
        if key != "sentinel_password" or len(values) != 1:
            raise ValueError(
                "redis+sentinel:// URL: the only query parameter is sentinel_password (once)"
            )
        sentinel_password = values[0] or None
    return SentinelURL(sentinels, parts[0], db, username, password, sentinel_password)


def _host_port(part: str) -> tuple[str, int]:
    if not part:
        raise ValueError("redis+sentinel:// URL needs host[:port][,host[:port]...]")
    if part.startswith("["):  # IPv6 literal
        host, bracket, tail = part[1:].partition("]")
        if not bracket or not host or (tail and not tail.startswith(":")):
            raise ValueError("redis+sentinel:// URL: bad IPv6 sentinel address")
        port_text = tail[1:] if tail else ""
    else:
        host, _, port_text = part.partition(":")
        if not host or ":" in port_text:
            raise ValueError("redis+sentinel:// URL: bad sentinel address")
    if not port_text:
        return unquote(host), DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("redis+sentinel:// URL: sentinel port must be 1..65535")
    return unquote(host), int(port_text)
