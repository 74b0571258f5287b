"""How the emulator answers: JSON bodies and ``errorList`` errors in the client's language.

Error texts are German unless the request asks for English (``Accept-Language: en``), as
the API's are.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

Text = tuple[str, str]  # (German, English)


def english(request: web.Request) -> bool:
    first = request.headers.get("Accept-Language", "").split(",")[0]
    tag = first.split(";")[0].strip().lower()
    return tag == "en" or tag.startswith("en-")


def entry(code: str, message: str, hint: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "severity": "error", "hint": hint}


def fail(
    request: web.Request,
    status: int,
    code: str,
    text: Text,
    headers: dict[str, str] | None = None,
) -> web.Response:
    message = text[1] if english(request) else text[0]
    return json_response({"errorList": [entry(code, message)]}, status, headers)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )
