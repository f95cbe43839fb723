"""The floor: a bare aiohttp pass-through proxy. One pooled ClientSession, bytes in,
bytes out; no parsing, auth, pricing or billing. What any Python aiohttp gateway costs.

    python bench/floor_proxy.py --port 18100 --upstream http://127.0.0.1:18000 [--workers 2]
"""

import argparse
import asyncio
import os

import aiohttp
import uvloop
from aiohttp import web

KEEP = ("Content-Type", "Authorization")


async def make_app(upstream: str) -> web.Application:
    app = web.Application()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: request.headers[k] for k in KEEP if k in request.headers}
        async with session.request(request.method, upstream + request.path_qs,
                                   data=await request.read(), headers=headers) as up:
            resp = web.StreamResponse(status=up.status, headers={
                "Content-Type": up.headers.get("Content-Type", "application/json")})
            resp.content_length = up.content_length
            await resp.prepare(request)
            async for data in up.content.iter_any():
                await resp.write(data)
            await resp.write_eof()
            return resp

    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_cleanup.append(lambda _: session.close())
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18100)
    p.add_argument("--upstream", default="http://127.0.0.1:18000")
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args()
    for _ in range(a.workers - 1):
        if os.fork() == 0:
            break
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(make_app(a.upstream), host=a.host, port=a.port, reuse_port=a.workers > 1,
                access_log=None, print=None)


if __name__ == "__main__":
    main()
