"""A cheap Lago stand-in for the benchmarks: accepts Lago's events API and counts.

``POST /api/v1/events`` (one event) and ``POST /api/v1/events/batch`` (up to 100) answer
200 like Lago and record each ``transaction_id``; a wrong ``Authorization`` gets 401.
``GET /_stats`` tells ``{"events": received, "unique": distinct transaction ids,
"requests": POSTs, "missing_subscription": events without external_subscription_id}``;
``POST /_reset`` clears the counts. No schema checks (tests/fakes/lago_server.py does
those): this one must cost next to nothing while a gateway is under load.

    python bench/lago_counter.py --port 18300 --api-key KEY
"""

import argparse
import asyncio

import orjson
import uvloop
from aiohttp import web


def make_app(api_key: str) -> web.Application:
    seen: set[str] = set()
    counts = {"events": 0, "requests": 0, "missing_subscription": 0}
    expected = f"Bearer {api_key}"

    def keep(ev: dict[str, object]) -> None:
        counts["events"] += 1
        seen.add(str(ev.get("transaction_id")))
        if not ev.get("external_subscription_id"):
            counts["missing_subscription"] += 1

    async def events(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != expected:
            return web.json_response({"status": 401, "error": "Unauthorized"}, status=401)
        counts["requests"] += 1
        body = orjson.loads(await request.read())
        if request.path.endswith("/batch"):
            batch = body.get("events") or []
            for ev in batch:
                keep(ev)
            return web.Response(body=orjson.dumps({"events": batch}),
                                content_type="application/json")
        keep(body.get("event") or {})
        return web.Response(body=orjson.dumps({"event": body.get("event")}),
                            content_type="application/json")

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({**counts, "unique": len(seen)})

    async def reset(_: web.Request) -> web.Response:
        seen.clear()
        for k in counts:
            counts[k] = 0
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/api/v1/events", events)
    app.router.add_post("/api/v1/events/batch", events)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18300)
    p.add_argument("--api-key", default="lago-bench-key")
    a = p.parse_args()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(make_app(a.api_key), host=a.host, port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
