"""An httpx transport whose every socket operation shares one total deadline.

httpx's timeouts are per operation: a server that drips one byte a second never trips a read
timeout, and neither does one that drips its headers. Here each connect, read, write and TLS
handshake gets at most the time left until `Deadline.at`, so a request is over by then, whatever
the server does. The DNS lookup, which no socket timeout covers, runs in a thread that is waited
for only until the deadline. Built from httpcore's public pieces (a NetworkBackend wrapping
SyncBackend).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.request import getproxies_environment

import httpcore
import httpx

logger = logging.getLogger(__name__)


class Deadline:
    """When the current request must be over (time.monotonic seconds); one per client."""

    def __init__(self) -> None:
        self.at = math.inf

    def start(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self, timeout: float | None, error: type[Exception]) -> float:
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise error("the request's total deadline passed")
        return remaining if timeout is None else min(timeout, remaining)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname,
                                      self._deadline.left(timeout, httpcore.ConnectTimeout))
        return _Stream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


Resolver = Callable[..., list[Any]]  # socket.getaddrinfo's signature


def _addresses(host: str, port: int, seconds: float, resolve: Resolver) -> list[str]:
    """The IP addresses of `host`, looked up within `seconds`."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    found: list[list[Any] | OSError] = []

    def lookup() -> None:
        try:
            found.append(resolve(host, port, type=socket.SOCK_STREAM))
        except OSError as e:
            found.append(e)

    # A stuck lookup is left behind in its daemon thread; the request itself is over.
    worker = threading.Thread(target=lookup, name=f"dns {host}", daemon=True)
    worker.start()
    worker.join(seconds)
    if not found:
        raise httpcore.ConnectTimeout(f"the DNS lookup of {host} took longer than the deadline")
    result = found[0]
    if isinstance(result, OSError):
        raise httpcore.ConnectError(f"cannot resolve {host}: {result}")
    return list(dict.fromkeys(str(info[4][0]) for info in result))


class _Backend(httpcore.NetworkBackend):
    def __init__(self, deadline: Deadline, resolve: Resolver) -> None:
        self._inner = httpcore.SyncBackend()
        self._deadline = deadline
        self._resolve = resolve

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        addresses = _addresses(host, port, self._deadline.left(timeout, httpcore.ConnectTimeout),
                               self._resolve)
        error: Exception = httpcore.ConnectError(f"no address for {host}")
        for address in addresses:  # TLS still checks the name: httpcore passes it on
            left = self._deadline.left(timeout, httpcore.ConnectTimeout)
            try:
                inner = self._inner.connect_tcp(address, port, left, local_address,
                                                socket_options)
            except httpcore.ConnectError as e:
                error = e
                continue
            return _Stream(inner, self._deadline)
        raise error

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None
                            ) -> httpcore.NetworkStream:
        left = self._deadline.left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_unix_socket(path, left, socket_options),
                       self._deadline)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


@contextmanager
def _as_httpx() -> Iterator[None]:
    """httpcore's exceptions as the httpx ones a client expects."""
    try:
        yield
    except httpcore.TimeoutException as e:
        raise httpx.TimeoutException(str(e)) from e
    except httpcore.UnsupportedProtocol as e:
        raise httpx.UnsupportedProtocol(str(e)) from e
    except httpcore.ProtocolError as e:
        raise httpx.RemoteProtocolError(str(e)) from e
    except httpcore.ConnectError as e:
        raise httpx.ConnectError(str(e)) from e
    except (httpcore.NetworkError, httpcore.ProxyError) as e:
        raise httpx.NetworkError(str(e)) from e


class _Body(httpx.SyncByteStream):
    def __init__(self, inner: Iterable[bytes]) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx():
            yield from self._inner

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


def _bypassed(host: str, no_proxy: str) -> bool:
    """Whether NO_PROXY ("example.org,.internal,10.0.0.1:8080,*") names `host` or a parent."""
    host = host.lower().rstrip(".")
    for entry in no_proxy.lower().split(","):
        name = entry.strip().lstrip("*").lstrip(".")
        name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name  # host:port
        if entry.strip() == "*" or (name and (host == name or host.endswith("." + name))):
            return True
    return False


def environment_proxies() -> dict[str, str]:
    """HTTP_PROXY / HTTPS_PROXY / ALL_PROXY (and NO_PROXY, under "no"), as httpx's own client
    honours them: a custom transport would otherwise ignore them."""
    found = getproxies_environment()
    if "all" in found:
        found = {"http": found["all"], "https": found["all"]} | found
    return found


class DeadlineTransport(httpx.BaseTransport):
    def __init__(self, deadline: Deadline, resolve: Resolver = socket.getaddrinfo,
                 proxies: Mapping[str, str] | None = None) -> None:
        self._backend = _Backend(deadline, resolve)
        self._ssl = httpx.create_ssl_context()
        self._pool = self._new_pool(None)
        self._no_proxy = (proxies or {}).get("no", "")
        self._proxied: dict[str, httpcore.ConnectionPool | httpcore.HTTPProxy] = {}
        for scheme in ("http", "https"):
            url = (proxies or {}).get(scheme, "").strip()
            url = url if "://" in url or not url else f"http://{url}"
            if url.lower().startswith(("http://", "https://")):
                self._proxied[scheme] = self._new_pool(url)
            elif url:
                logger.warning("the %s proxy %s is not an http(s) proxy; not used", scheme, url)

    def _new_pool(self, proxy: str | None) -> httpcore.ConnectionPool | httpcore.HTTPProxy:
        # No connection is reused: bytes a server sent past its Content-Length would otherwise
        # be read as the answer to the next request (a broken page, or a forged one). A fetch
        # makes a few requests; a handshake each costs nothing that matters.
        if proxy is None:
            return httpcore.ConnectionPool(ssl_context=self._ssl, network_backend=self._backend,
                                           max_connections=4, max_keepalive_connections=0)
        return httpcore.HTTPProxy(proxy_url=proxy, ssl_context=self._ssl,
                                  network_backend=self._backend, max_connections=4,
                                  max_keepalive_connections=0)

    def _pool_for(self, url: httpx.URL) -> httpcore.ConnectionPool | httpcore.HTTPProxy:
        proxied = self._proxied.get(url.scheme)
        if proxied is None or _bypassed(url.host, self._no_proxy):
            return self._pool
        return proxied

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host,
                             port=request.url.port, target=request.url.raw_path),
            headers=request.headers.raw, content=request.stream, extensions=request.extensions)
        with _as_httpx():
            response = self._pool_for(request.url).handle_request(core)
        assert isinstance(response.stream, Iterable)
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_Body(response.stream), extensions=response.extensions)

    def close(self) -> None:
        for pool in (self._pool, *self._proxied.values()):
            pool.close()
