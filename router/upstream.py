"""The router's upstream HTTP client: one aiohttp ``ClientSession`` per router process.

The HTTP protocol is aiohttp's: connection pools per origin with keep-alive, interim (1xx) responses
skipped, HEAD / 204 / 304 known to have no body, close-delimited and chunked bodies, response-head
size limits, TLS. What is ours is what the proxy needs on top:

- timeouts: connect; one first-byte deadline covering writing the request and reading the whole head
  (per entry: a cold Modal GPU takes minutes; a trickled head or a backend that never reads meets
  it too); and the idle gap between two body chunks (``router.read_timeout``);
- one retry, and only when the request provably never left: the connection could not be opened, or
  a pooled connection held bytes nobody asked for (:class:`_CleanConnectionRequest`: aiohttp's pool
  would hand them to the next request as its answer). aiohttp itself re-sends an *idempotent*
  request (GET, HEAD, ...) once when a pooled connection turns out closed (RFC 9112 9.3.1); a POST is
  never sent twice;
- answers a proxy cannot pass on refused before the client sees a byte: a status outside 200-599
  (1xx other than those aiohttp skips, 101 upgrades nobody asked for), a transfer coding other than
  chunked, a header value an HTTP/1.1 server may not send;
- same-origin 303s followed with a GET (Modal's answer to a web request that runs past 150 s);
- errors the proxy can act on: :class:`UpstreamError` before the answer started (the client gets a
  JSON 502/504), and the same raised from :meth:`UpstreamResponse.chunks` once it started (the proxy
  then aborts the client's connection rather than end a truncated answer cleanly).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
from aiohttp.connector import Connection
from yarl import URL

from router.backends import Upstream

MAX_REDIRECTS = 5  # Modal 303s a web request every 150 s; five hops outlast any IDE's patience
# aiohttp adds these unless told not to; a proxy forwards the client's own or none.
SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})
# Response head limits (aiohttp's defaults, named here because they are a promise to the operator):
# a line of at most 8190 bytes, at most 128 header fields.
MAX_HEAD_LINE = 8190
MAX_HEAD_FIELDS = 128
# Header values uvicorn refuses to send (control characters): such an answer is refused whole.
UNSENDABLE_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
BODYLESS_STATUSES = (204, 304)  # a Content-Length on these describes another answer: not passed on


class UpstreamError(Exception):
    """The backend could not be reached, or broke or stalled its answer.

    ``code`` names what happened for the client's JSON error and the metrics; the message is safe to
    show a client (no bytes of the backend's answer); ``detail`` is for the router's log only.
    """

    code = "backend-unreachable"

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class UpstreamTimeout(UpstreamError):
    code = "backend-timeout"


class UpstreamBadResponse(UpstreamError):
    """The backend was reached but its answer was not HTTP we accept (dropped, malformed, too large)."""

    code = "backend-bad-response"


class StaleConnectionError(aiohttp.ServerDisconnectedError):
    """A pooled connection held unread bytes: closed unused, and the request sent on another one."""


class _CleanConnectionRequest(aiohttp.ClientRequest):
    """Sends only on a connection with nothing unread on it.

    A backend may write to an idle pooled connection (a second answer, a late one). aiohttp's pool
    checks only that the connection is open, and its parser would hand those bytes to the next
    request as that request's answer: one client's completion served to another. Before anything
    is written, such a connection is refused here; aiohttp closes it and the request goes out on
    another one (aiohttp retries idempotent methods itself, :meth:`UpstreamClient._send` the rest).
    """

    async def send(self, conn: Connection) -> aiohttp.ClientResponse:
        protocol = conn.protocol
        if protocol is not None and protocol.should_close:  # buffered bytes, or marked for closing
            raise StaleConnectionError("a pooled connection had bytes from the backend nobody asked for")
        return await super().send(conn)


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """The system's trust store, plus ``ca_bundle`` (a PEM file) when given."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


class UpstreamClient:
    """The pooled client. One per router; :meth:`request` is the whole API."""

    def __init__(
        self, *, connect_timeout: float, read_timeout: float, keepalive: float, ca_bundle: Path | None = None
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.ca_bundle = ca_bundle
        self._session: aiohttp.ClientSession | None = None
        self._retired: list[aiohttp.ClientSession] = []

    def adopt(self, *, connect_timeout: float, read_timeout: float, keepalive: float, ca_bundle: Path | None) -> None:
        """Adopt reloaded settings. A new pool (keep-alive, trust) serves new requests; the old one
        finishes its answers in flight and is closed with the router."""
        if (keepalive, ca_bundle) != (self.keepalive, self.ca_bundle) and self._session is not None:
            self._retired.append(self._session)
            self._session = None
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.keepalive, self.ca_bundle = keepalive, ca_bundle

    def session(self) -> aiohttp.ClientSession:
        """The session, made on first use (it binds to the running event loop)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0,  # the entry gates bound requests in flight; a second cap here would only queue them
                keepalive_timeout=self.keepalive if self.keepalive > 0 else None,
                force_close=self.keepalive <= 0,
                ssl=tls_context(self.ca_bundle),
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
                auto_decompress=False,  # bytes pass through as the backend encoded them
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=SKIP_AUTO_HEADERS,
                max_line_size=MAX_HEAD_LINE,
                max_field_size=MAX_HEAD_LINE,
                max_headers=MAX_HEAD_FIELDS,
                request_class=_CleanConnectionRequest,
            )
        return self._session

    async def close(self) -> None:
        for session in (*self._retired, self._session):
            if session is not None:
                await session.close()
        self._session = None
        self._retired.clear()

    async def request(
        self, upstream: Upstream, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> UpstreamResponse:
        """Send the request and wait for the response head (at most the first-byte timeout)."""
        first_byte = upstream.first_byte_timeout or self.read_timeout
        pairs = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]
        pairs += [(name.decode("latin-1"), value.decode("latin-1")) for name, value in upstream.headers]
        url = URL(upstream.base_url + target, encoded=True)
        response = await self._send(method, url, pairs, body, first_byte)
        for _ in range(MAX_REDIRECTS):
            if not (upstream.follow_redirects and response.status == 303):
                break
            location = _same_origin(url, response.headers.get("location"))
            if location is None:
                break  # another origin: not ours to follow; the proxy passes the 303 on
            response.close()
            without_body = [(n, v) for n, v in pairs if n.lower() not in ("content-type", "content-encoding")]
            url = location
            response = await self._send("GET", url, without_body, b"", first_byte)
        try:
            _check_passable(response)
        except UpstreamError:
            response.close()
            raise
        return UpstreamResponse(response, self.read_timeout)

    async def _send(
        self, method: str, url: URL, headers: list[tuple[str, str]], body: bytes, first_byte: float
    ) -> aiohttp.ClientResponse:
        session = self.session()
        for attempt in (1, 2):
            try:
                # One deadline for writing the request and reading the whole head: a backend that
                # never reads, or trickles its head (or 100 Continues) byte by byte, meets it too.
                async with asyncio.timeout(first_byte):
                    return await session.request(method, url, headers=headers, data=body or None, allow_redirects=False)
            except TimeoutError:
                raise UpstreamTimeout(f"backend sent no answer within {first_byte:g}s") from None
            except StaleConnectionError:
                if attempt == 1:
                    continue  # nothing was written to it: send on another connection
                raise UpstreamBadResponse("backend keeps writing to idle connections") from None
            except aiohttp.ClientSSLError as exc:
                raise UpstreamError(
                    f"TLS with {url.host}:{url.port} failed; if the backend's certificate is signed by a private "
                    f"CA, set router.upstream_ca_bundle to that CA's PEM file",
                    str(exc),
                ) from None
            except aiohttp.ClientConnectorError as exc:
                if attempt == 1:
                    continue  # the connection was never opened: nothing was sent, try once more
                raise UpstreamError(f"could not connect to {url.host}:{url.port}: {exc.os_error}") from None
            except aiohttp.ServerTimeoutError:  # connect timeout (aiohttp's ConnectionTimeoutError)
                raise UpstreamError(
                    f"could not connect to {url.host}:{url.port} within {self.connect_timeout:g}s"
                ) from None
            except aiohttp.ServerDisconnectedError:
                raise UpstreamBadResponse("backend closed the connection before answering") from None
            except aiohttp.ClientResponseError as exc:
                raise UpstreamBadResponse(
                    f"backend sent a malformed or oversized response head or framing (accepted: lines of at "
                    f"most {MAX_HEAD_LINE} bytes, at most {MAX_HEAD_FIELDS} header fields, one framing)",
                    str(exc.message),
                ) from None
            except aiohttp.ClientError as exc:
                raise UpstreamBadResponse("backend failed before answering", repr(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover


class UpstreamResponse:
    """A response whose head has arrived. Read :meth:`chunks`, then :meth:`close` (always)."""

    __slots__ = ("_idle", "_response", "_watch", "headers", "raw_headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, idle_timeout: float) -> None:
        self._response = response
        self._idle = idle_timeout
        self._watch: tuple[asyncio.Future[None], Callable[[asyncio.Future[None]], None]] | None = None
        self.status = response.status
        self.headers = response.headers
        raw = response.raw_headers
        if self.status in BODYLESS_STATUSES:
            raw = tuple((name, value) for name, value in raw if name.lower() != b"content-length")
        self.raw_headers = raw
        connection = response.connection  # None when the body came whole with the head
        protocol = connection.protocol if connection is not None else None
        if protocol is not None:
            # From the head on, the backend may be silent for read_timeout between chunks (aiohttp's
            # sock_read, started now; until here the first-byte deadline applied).
            protocol.read_timeout = idle_timeout
            protocol.start_timeout()
            self._watch_connection(protocol.closed, response.content)

    def _watch_connection(self, closed: asyncio.Future[None] | None, content: aiohttp.StreamReader) -> None:
        """End the body with an error when its connection closes before the body is complete.

        aiohttp's C parser, on a malformed chunk, closes the connection but leaves the body stream
        waiting for bytes that cannot come; without this the client would wait out read_timeout."""
        if closed is None:
            return

        def broken_off(_: asyncio.Future[None]) -> None:
            if not content.is_eof() and content.exception() is None:
                content.set_exception(aiohttp.ClientPayloadError("the connection closed in the middle of the body"))

        closed.add_done_callback(broken_off)
        self._watch = (closed, broken_off)

    async def chunks(self) -> AsyncIterator[tuple[bytes, bool]]:
        """Yield ``(chunk, more)`` as the body arrives; ``more`` is False on the last chunk.

        Raises :class:`UpstreamError` if the backend breaks the body off (closes early, sends a
        malformed chunk) or sends nothing for the idle timeout. The connection goes back to the pool
        as soon as the body is complete, before the last chunk is yielded.
        """
        content = self._response.content
        idle = self._idle
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk, not content.at_eof()
        except aiohttp.SocketTimeoutError:
            raise UpstreamTimeout(f"backend sent nothing for {idle:g}s in the middle of its answer") from None
        except (aiohttp.ClientError, RuntimeError) as exc:  # RuntimeError: aiohttp's "Connection closed."
            raise UpstreamBadResponse("backend broke off its answer", repr(exc)) from None

    def close(self) -> None:
        """Close the connection unless the body was read whole (then it is back in the pool already)."""
        if self._watch is not None:
            closed, callback = self._watch
            closed.remove_done_callback(callback)
            self._watch = None
        self._response.close()


def _check_passable(response: aiohttp.ClientResponse) -> None:
    """Refuse an answer the proxy cannot pass on faithfully, before the client sees any of it."""
    status = response.status
    if not 200 <= status <= 599:
        raise UpstreamBadResponse(f"backend answered with status {status}, which the router does not pass on")
    coding = response.headers.get("Transfer-Encoding")
    if coding is not None and coding.strip().lower() != "chunked":
        raise UpstreamBadResponse(f"backend used transfer coding {coding!r}; only chunked is passed on")
    for _, value in response.raw_headers:
        if UNSENDABLE_VALUE.search(value):
            raise UpstreamBadResponse("backend sent a header value with control characters")


def _same_origin(base: URL, location: str | None) -> URL | None:
    """``location`` resolved against ``base`` if it stays on base's scheme, host and port, else None."""
    if not location:
        return None
    try:
        target = base.join(URL(location))
    except ValueError:
        return None
    if (target.scheme, target.host, target.port) != (base.scheme, base.host, base.port):
        return None
    return target
