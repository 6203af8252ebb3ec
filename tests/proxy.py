"""A small TCP proxy for outage tests: service processes reach PostgreSQL through it.

It runs its own asyncio loop in a background thread. `cut()` drops every open connection at
once (with a reset, as a crashed or restarting server does) and refuses new ones (accepted,
then reset at once) until `restore()`. The real server is never touched, so other tests that
share it go on undisturbed.

    with running_proxy("127.0.0.1", 5432) as proxy:
        url = proxied_url(database_url, proxy)   # give this URL to the services
        proxy.cut(); ...; proxy.restore()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

CHUNK = 65_536


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: the peer sees 'connection reset', not a clean end."""
    sock: socket.socket | None = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Proxy:
    """Forwards 127.0.0.1:<port> to target_host:target_port; can cut and restore the link."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.refused = 0  # connections refused while cut
        self.accepted = 0
        self._refusing = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tcp-proxy", daemon=True
        )
        self._server: asyncio.Server | None = None

    @property
    def cut_now(self) -> bool:
        """True between `cut` and `restore`."""
        return self._refusing

    def start(self) -> Proxy:
        """Listen on a free port of 127.0.0.1 (see `port`)."""
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        """Close everything and end the thread."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def cut(self) -> None:
        """Reset every open connection, and refuse new ones until `restore`."""
        self._call(self._cut())

    def restore(self) -> None:
        """Let connections through again."""
        self._refusing = False

    def _call(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _cut(self) -> None:
        self._refusing = True
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._refusing:
            self.refused += 1
            _reset(client_w)
            return
        try:
            server_r, server_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            _reset(client_w)
            return
        if self._refusing:  # cut while connecting
            _reset(client_w)
            _reset(server_w)
            return
        self.accepted += 1
        self._writers.update((client_w, server_w))
        try:
            await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))
        finally:
            for writer in (client_w, server_w):
                self._writers.discard(writer)
                writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF or error, then half-close the other side."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):
        writer.transport.abort()


@contextmanager
def running_proxy(target_host: str, target_port: int) -> Iterator[Proxy]:
    """A started proxy, stopped at the end whatever happens."""
    proxy = Proxy(target_host, target_port)
    try:
        yield proxy.start()
    finally:
        proxy.stop()


def proxy_for(database_url: str) -> Proxy:
    """A proxy (not started) to the server of a database URL."""
    parts = urlsplit(database_url)
    return Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)


def proxied_url(database_url: str, proxy: Proxy) -> str:
    """The same database URL, through the proxy."""
    parts = urlsplit(database_url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{proxy.port}" if user else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))
