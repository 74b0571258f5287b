"""A local HTTP file server standing in for an object store, for tests (real sockets).

``FileServer`` serves what a test put in it and records every request it got (method, path,
query, headers), so a test can assert what reached a source. Besides plain files
(``put``), it answers:

- ``/status/<code>``: that status, no body (``Retry-After: 0`` on 503);
- ``/redirect/<n>/<path>``: ``n`` redirects (302) in a row, then ``/<path>``;
- ``/to?location=<url>``: one redirect to ``url`` (anywhere);
- ``/cookie/<path>``: sets a cookie and redirects to ``/<path>``;
- ``/chunked/<size>``: ``size`` bytes without ``Content-Length`` (chunked), as ``text/plain``;
- ``/declares/<size>``: declares ``Content-Length: size`` and sends nothing;
- ``/slow``: sends headers, then waits ``slow_seconds`` before the body;
- ``/typed/<type>/<subtype>``: a few bytes served as that content type;
- ``/flaky/<n>/<path>``: 503 for the first ``n`` requests, then ``/<path>``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

# aiohttp adds Content-Type: application/octet-stream to every body; this marker removes it.
_NO_TYPE = "X-Test-No-Content-Type"


async def _drop_content_type(_: web.Request, response: web.StreamResponse) -> None:
    if response.headers.pop(_NO_TYPE, None) is not None:
        response.headers.pop("Content-Type", None)


def _found(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location})


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]


@dataclass
class FileServer:
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    slow_seconds: float = 5.0
    port: int = 0
    _runner: web.AppRunner | None = None
    _flaky: dict[str, int] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def put(self, path: str, data: bytes, content_type: str | None = "image/png") -> str:
        self.files["/" + path.lstrip("/")] = (data, content_type or "")
        return self.url(path)

    async def start(self) -> FileServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_response_prepare.append(_drop_content_type)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(request.method, request.path, request.query_string, dict(request.headers))
        )
        path = request.path
        special = await self._special(request, path.strip("/").split("/"))
        if isinstance(special, web.StreamResponse):
            return special
        path = special or path
        if path not in self.files:
            return web.Response(status=404)
        data, content_type = self.files[path]
        head = {"Content-Type": content_type} if content_type else {_NO_TYPE: "1"}
        return web.Response(body=data, headers=head)

    async def _special(
        self, request: web.Request, parts: list[str]
    ) -> web.StreamResponse | str | None:
        """The answer of a special route, the file path it stands for, or None."""
        match parts:
            case ["status", code]:
                head = {"Retry-After": "0"} if code == "503" else {}
                return web.Response(status=int(code), headers=head)
            case ["redirect", n, *rest]:
                target = "/" + "/".join(rest)
                if int(n) > 1:
                    target = f"/redirect/{int(n) - 1}{target}"
                return _found(target)
            case ["to"]:
                return _found(request.query["location"])
            case ["cookie", *rest]:
                found = _found("/" + "/".join(rest))
                found.set_cookie("session", "from-the-source")
                return found
            case ["chunked", size]:
                return await self._chunked(request, int(size))
            case ["declares", size]:
                response = web.StreamResponse(headers={"Content-Type": "image/png"})
                response.content_length = int(size)
                await response.prepare(request)
                return response
            case ["slow"]:
                response = web.StreamResponse(headers={"Content-Type": "text/plain"})
                await response.prepare(request)
                await asyncio.sleep(self.slow_seconds)
                await response.write(b"late")
                return response
            case ["typed", major, minor]:
                return web.Response(body=b"data", headers={"Content-Type": f"{major}/{minor}"})
            case ["flaky", n, *rest]:
                count = self._flaky.get(request.path, 0)
                self._flaky[request.path] = count + 1
                if count < int(n):
                    return web.Response(status=503)
                return "/" + "/".join(rest)
        return None

    async def _chunked(self, request: web.Request, size: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        block = b"x" * 65536
        sent = 0
        try:
            while sent < size:
                piece = block[: min(len(block), size - sent)]
                await response.write(piece)
                sent += len(piece)
            await response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass  # the client aborted, as it should past the limit
        return response
