"""Config writers: the router's YAML, nginx (backends and proxy), HAProxy, redis-server's
command line. Every process listens on loopback."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from bench.lib import HOST

BACKENDS = ("b1", "b2", "b3")  # the backend nginx's servers (instances of the routers)


def instance_url(port: int) -> str:
    """The URL of an instance (or backend) on the loopback ``port``."""
    return f"http://{HOST}:{port}"


def router_yaml(
    port: int | str,
    admin_port: int | str,
    instances: Iterable[tuple[str, str]],
    *,
    workers: int = 1,
    profile: str | None = None,
    log_level: str | None = None,
    store_url: str | None = None,
    store_prefix: str | None = None,
    metrics: bool = True,
    access_log: str | None = None,
    idempotency_keys: bool = True,
    instance_extra: str = "",
    extra: str = "",
) -> str:
    """A router config: listen and admin on loopback, ``instances`` as (name, url) pairs.
    ``port`` and ``admin_port`` may be placeholders (the tests' ``"{port}"``); ``workers``
    > 1 sets ``listen.workers``; ``metrics`` false, ``metrics: {enabled: false}``;
    ``access_log``: a file the JSON access log (``log.access``) is written to;
    ``idempotency_keys`` false, ``listen.idempotency_keys: false``;
    ``instance_extra``: more keys in each instance's mapping (``", weight: 2"``); ``extra``:
    more YAML, after the instances."""
    listen = f"host: {HOST}, port: {port}" + (f", workers: {workers}" if workers > 1 else "")
    if not idempotency_keys:
        listen += ", idempotency_keys: false"
    lines = [f"listen: {{{listen}}}", f"admin: {{host: {HOST}, port: {admin_port}}}"]
    if profile is not None:
        lines.append(f"profile: {profile}")
    log = [f"level: {log_level}"] if log_level is not None else []
    if access_log is not None:
        log.append(f"access: {{enabled: true, format: json, path: '{access_log}'}}")
    if log:
        lines.append(f"log: {{{', '.join(log)}}}")
    if store_url is not None:
        prefix = f', prefix: "{store_prefix}"' if store_prefix is not None else ""
        lines.append(f'store: {{url: "{store_url}"{prefix}}}')
    if not metrics:
        lines.append("metrics: {enabled: false}")
    lines.append("instances:")
    lines += [f"  - {{name: {name}, url: '{url}'{instance_extra}}}" for name, url in instances]
    return "\n".join(lines) + "\n" + extra


def redis_url(port: int) -> str:
    """The ``store.url`` of a redis-server on the loopback ``port`` (database 0)."""
    return f"redis://{HOST}:{port}/0"


def nginx_conf(prefix: Path, servers: str) -> str:
    """An nginx config (1 worker, in the foreground, files under ``prefix``) around the
    ``servers`` text (``server`` and ``upstream`` blocks)."""
    prefix.mkdir(parents=True, exist_ok=True)
    temps = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # keepalive_requests: nginx closes a client connection after 1000 requests by default;
    # wrk and the router keep theirs open, so lift the cap to measure proxying, not
    # reconnects (the router has no such cap either).
    return f"""worker_processes 1;
daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
{temps}
{servers}
}}
"""


def status_server(port: int) -> str:
    """An nginx server block with stub_status (connections and requests the backends saw)."""
    return f"""    server {{
        listen {HOST}:{port};
        location / {{ stub_status; }}
    }}
"""


def backend_nginx_conf(tmp: Path, ports: list[int], status_port: int) -> str:
    """The backends b1..b3, tiny JSON naming the node, and a stub_status server."""
    # The status server counts connections accepted and requests served by all three
    # backends: how many upstream connections a proxy opens, and that it forwards all.
    servers = (
        "\n"
        + status_server(status_port).rstrip("\n")
        + "\n".join(
            f"""    server {{
        listen {HOST}:{port} backlog=4096;
        default_type application/json;
        location / {{ return 200 '{{"ok":true,"node":"{name}"}}'; }}
    }}"""
            for name, port in zip(BACKENDS, ports, strict=True)
        )
    )
    return nginx_conf(tmp / "backend", servers)


def proxy_nginx_conf(
    tmp: Path, port: int, backend_ports: list[int], keepalive: int = 64, name: str = "nginx-proxy"
) -> str:
    """nginx as a sticky proxy: ``hash $http_x_session_id consistent``, ``keepalive``
    idle upstream connections kept; its files in ``tmp/name``."""
    upstream = "\n".join(f"        server {HOST}:{p};" for p in backend_ports)
    body = f"""    upstream backends {{
        hash $http_x_session_id consistent;
{upstream}
        keepalive {keepalive};
        keepalive_requests 1000000;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    return nginx_conf(tmp / name, body)


def haproxy_conf(port: int, backend_ports: list[int]) -> str:
    """HAProxy as a sticky proxy: ``balance hdr(X-Session-Id)``, consistent hashing."""
    servers = "\n".join(
        f"    server {name} {HOST}:{p}" for name, p in zip(BACKENDS, backend_ports, strict=True)
    )
    return f"""global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    http-reuse always

frontend fe
    bind {HOST}:{port}
    default_backend be

backend be
    balance hdr(X-Session-Id)
    hash-type consistent
{servers}
"""


def redis_args(
    data: Path,
    port: int,
    *,
    appendonly: bool = True,
    logfile: str = "",
    unixsocket: str = "",
    server: str = "redis-server",
) -> list[str]:
    """redis-server in the foreground on the loopback ``port``, its files in ``data``
    (created), no RDB snapshots; ``logfile`` "" logs to stdout, ``unixsocket`` "" has none."""
    data.mkdir(parents=True, exist_ok=True)
    return [
        server,
        "--port", str(port),
        "--bind", HOST,
        "--dir", str(data),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--daemonize", "no",
        "--logfile", logfile,
        "--unixsocket", unixsocket,
    ]  # fmt: skip
