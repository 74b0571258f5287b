"""The object store of the attachments benchmark: static files over HTTP, and a sink.

``GET /files/<name>`` serves ``<dir>/<name>`` (sendfile) as ``image/png``; ``POST /sink``
reads a body and throws it away (the upload leg of the pure-transfer baseline). Run as its
own process: ``python bench/peers/file_server.py DIR PORT``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web

CHUNK = 256 * 1024


def app(root: Path) -> web.Application:
    async def get(request: web.Request) -> web.StreamResponse:
        path = root / request.match_info["name"]
        if not path.is_file():
            raise web.HTTPNotFound
        return web.FileResponse(path, headers={"Content-Type": "image/png"})

    async def sink(request: web.Request) -> web.Response:
        size = 0
        while chunk := await request.content.read(CHUNK):
            size += len(chunk)
        return web.json_response({"size": size})

    application = web.Application(client_max_size=64 * 1024 * 1024)
    application.router.add_get("/files/{name}", get)
    application.router.add_post("/sink", sink)
    return application


if __name__ == "__main__":
    web.run_app(app(Path(sys.argv[1])), host="127.0.0.1", port=int(sys.argv[2]), access_log=None,
                print=None)  # fmt: skip
