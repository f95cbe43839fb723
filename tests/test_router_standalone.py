"""The router without the proxy: pure asyncio, given deployments and a coroutine that
makes one attempt (what the SDK will drive, issue 16). Importing it imports no HTTP
framework; the attempt here is the engine's own billed chat call over real HTTP."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal

from tallygate import engine
from tallygate.engine import CallContext
from tallygate.event import FailureEvent, UsageEvent
from tallygate.pricing import PriceBook
from tallygate.providers.base import Deployment, PriceOverride
from tallygate.routing import Attempt, Router
from tallygate.routing.settings import DeploymentRouting, RouterSettings
from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import free_port


def test_importing_the_router_imports_no_http_framework() -> None:
    code = ("import sys, tallygate.routing, tallygate.routing.health; "
            "print(sorted(m for m in ('aiohttp', 'tallygate.proxy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


class Ledger:
    """A Recorder: what the engine bills and what failed."""

    def __init__(self) -> None:
        self.events: list[UsageEvent] = []
        self.failures: list[FailureEvent] = []

    async def record(self, event: UsageEvent) -> None:
        self.events.append(event)

    async def record_failure(self, failure: FailureEvent) -> None:
        self.failures.append(failure)


async def test_a_router_driving_engine_calls_falls_back_and_bills_once() -> None:
    price = PriceOverride(input_cost_per_token=Decimal("0.000001"),
                          output_cost_per_token=Decimal("0.000002"))
    async with FakeOpenAI() as up:
        models = {
            "g": (Deployment("openai", "gpt-4o-mini", f"http://127.0.0.1:{free_port()}/v1",
                             api_key="k", price=price),),
            "backup": (Deployment("openai", "gpt-4o-mini", up.base_url, api_key="k",
                                  price=price),)}
        settings = RouterSettings(
            num_retries=1, fallbacks={"g": ("backup",)},
            deployments={"g": (DeploymentRouting("down"),),
                         "backup": (DeploymentRouting("up"),)})
        router = Router(models, settings)
        ledger, prices = Ledger(), PriceBook()
        ctx = CallContext(model="g", customer="acme")

        async def attempt(att: Attempt) -> UsageEvent:
            params = {"messages": [{"role": "user", "content": "hi"}]}
            _, event = await engine.chat(att.deployment, params, ctx.routed(att.tag),
                                         ledger, prices)
            return event

        await router.start()
        event = await router.run(router.resolve("g"), attempt)
        await router.close()
    assert event.routing is not None
    assert (event.routing.group, event.routing.model_id) == ("backup", "up")
    # One try on the dead deployment; no other to retry on, and a fallback ready: no wait.
    assert (event.routing.attempts, event.routing.fallbacks) == (2, 1)
    assert event.cost == 12 * Decimal("0.000001") + 7 * Decimal("0.000002")
    assert ledger.events == [event]          # billed once: the answering attempt
    assert [f.routing.model_id for f in ledger.failures if f.routing] == ["down"]
