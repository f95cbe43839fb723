"""Routing: model group -> deployment. Strategies, retries, fallbacks, cooldowns,
wildcards and health checks; the only place that decides which deployment answers.

Pure asyncio (no HTTP framework): the proxy and the SDK both drive ``Router.run`` with a
coroutine that makes one attempt.
"""

from tallygate.routing.options import NO_OPTIONS, RouteOptions, pop_options
from tallygate.routing.router import CURRENT_ATTEMPT, Attempt, Plan, Router
from tallygate.routing.settings import RouterSettings

__all__ = ["CURRENT_ATTEMPT", "NO_OPTIONS", "Attempt", "Plan", "RouteOptions", "Router",
           "RouterSettings", "pop_options"]
