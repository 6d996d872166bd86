"""The serving stack's floor for ``bench_serve.py``: an app that reads the request, answers a constant body.

    python benchmarks/serve_floor.py --workspace DIR --port PORT --body-file FILE

It is started through ``fraudops.serving.app.run`` itself, with only the application swapped, so uvicorn
runs with exactly the options ``fraudops serve`` uses (uvloop, fraudops' httptools protocol, no access
log, the same keep-alive): whatever it answers per second is what that stack can do with no work at all.
``create_floor`` is also the factory an alternative server (granian) is given for the same measurement.
The body file holds what fraudops answers for the same request, so both send the same bytes back.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

BODY_ENV = "BENCH_FLOOR_BODY_FILE"


def create_floor() -> Callable[..., Any]:
    """An ASGI app answering every HTTP request with the body of ``$BENCH_FLOOR_BODY_FILE``."""
    body = Path(os.environ[BODY_ENV]).read_bytes()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-model-version", b"1"),
    ]
    start = {"type": "http.response.start", "status": 200, "headers": headers}
    answer = {"type": "http.response.body", "body": body}

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        message = await receive()  # the whole request body, as fraudops reads it
        while message.get("more_body", False):
            message = await receive()
        await send(start)
        await send(answer)

    return app


def main() -> None:
    import uvicorn

    from fraudops.serving.app import run
    from fraudops.workspace import load_settings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", required=True, help="a workspace (its serve settings are used)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--body-file", required=True, help="the constant response body")
    args = ap.parse_args()
    os.environ[BODY_ENV] = str(Path(args.body_file).resolve())
    serve_with_uvicorn = uvicorn.run

    def swapped(app: str, **options: Any) -> None:
        serve_with_uvicorn("serve_floor:create_floor", **options)

    uvicorn.run = swapped  # type: ignore[assignment]
    run(load_settings(args.workspace), host="127.0.0.1", port=args.port, workers=1)


if __name__ == "__main__":
    main()
