"""A TCP proxy a test can cut: a service "vanishes" for one client while the real one stays up.

Used for the broker and for Redis: the machine's own services must never be stopped.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``.

    ``cut()`` closes every proxied connection and stops listening, so the client sees its
    connection drop and every reconnect refused; ``freeze()`` keeps the sockets open but
    forwards nothing (a silent partition, found only by heartbeats); ``restore()`` ends
    either, listening on the same port again.
    ``delay_up`` holds what the client sends for that many seconds before passing it on (a
    slow or buffering link): what is held when the proxy is cut never reaches the target.
    """

    def __init__(
        self, target_host: str = "127.0.0.1", target_port: int = 5672, *, delay_up: float = 0.0
    ) -> None:
        self.target = (target_host, target_port)
        self.delay_up = delay_up
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def address(self) -> str:
        """``host:port`` to put in a URL of another scheme (``redis://...``)."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    def freeze(self) -> None:
        self._flowing.clear()

    async def restore(self) -> None:
        self._flowing.set()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.cut()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for source, sink, delay in ((reader, up_writer, self.delay_up), (up_reader, writer, 0)):
            pipe = asyncio.create_task(self._pipe(source, sink, delay))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, delay: float
    ) -> None:
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        passing = asyncio.create_task(self._pass_on(held, sink))
        loop = asyncio.get_running_loop()
        try:
            while data := await source.read(65536):
                held.put_nowait((loop.time() + delay, data))
            held.put_nowait((loop.time() + delay, b""))
            await passing
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            passing.cancel()
            self._writers.discard(sink)
            with contextlib.suppress(OSError):
                sink.close()

    async def _pass_on(
        self, held: asyncio.Queue[tuple[float, bytes]], sink: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await held.get()
            if not data:
                return
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)  # the link's delay itself
            await self._flowing.wait()
            sink.write(data)
            await sink.drain()
