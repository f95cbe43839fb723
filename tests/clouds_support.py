"""What the cloud-provider tests share: one stand-in per provider, one proxy serving a
deployment of each, and the prices a call of each is billed at, written out by hand.

The prices are genai-prices 0.2.3's (per million tokens), copied here on purpose: a
golden test compares tallygate's Decimal with this arithmetic, not with the library.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_compat_server import FakeCompat
from tests.fakes.server_base import run_in_thread
from tests.proxy_harness import (
    MASTER_KEY,
    RunningProxy,
    config_dict,
    lago_env,
    proxy_settings,
    run_proxy,
)

UPSTREAM_KEYS = {name: f"sk-{name.replace('_', '')}-secret-{i:04d}"
                 for i, name in enumerate((
                     "azure", "azure_ai", "mistral", "deepseek", "groq", "together_ai",
                     "fireworks_ai", "xai", "openrouter", "perplexity", "cerebras",
                     "nvidia_nim", "hosted_vllm", "lm_studio"))}
MTOK = Decimal(1_000_000)


@dataclass(frozen=True)
class Rates:
    input: Decimal
    cache_read: Decimal | None
    output: Decimal
    per_call: Decimal = Decimal(0)   # Perplexity's request fee


def _r(inp: str, cache: str | None, out: str, per_call: str = "0") -> Rates:
    return Rates(Decimal(inp), None if cache is None else Decimal(cache), Decimal(out),
                 Decimal(per_call))


@dataclass(frozen=True)
class Cloud:
    flavor: str
    model: str                            # after the provider prefix
    rates: Rates | None                   # None: DeepSeek's, which depend on the hour
    reasoning: bool = True                # the provider reports reasoning tokens
    caches: bool = True                   # the provider reports cache hits
    params: Mapping[str, Any] = field(default_factory=dict)
    answer_model: str | None = None       # Azure: the model its answers name

    @property
    def group(self) -> str:
        return f"{self.flavor}-chat"

    def rates_at(self, when: datetime) -> Rates:
        if self.rates is not None:
            return self.rates
        # DeepSeek: standard prices from 00:30 to 16:30 UTC, half price otherwise.
        t = when.astimezone(UTC).time()
        if time(0, 30) <= t < time(16, 30):
            return _r("0.27", "0.07", "1.1")
        return _r("0.135", "0.035", "0.55")


# Self-hosted and NVIDIA models have no library price: their deployments set LiteLLM's
# per-token prices, which bill them.
_OWN_PRICES = {"input_cost_per_token": "0.0000002", "cache_read_input_token_cost": "0.0000001",
               "output_cost_per_token": "0.0000006"}
OWN_RATES = _r("0.2", "0.1", "0.6")

CLOUDS: tuple[Cloud, ...] = (
    Cloud("azure", "prod-chat", _r("0.15", "0.075", "0.6"),
          params={"api_version": "2024-10-21"}, answer_model="gpt-4o-mini-2024-07-18"),
    Cloud("azure_ai", "gpt-4o-mini", _r("0.15", "0.075", "0.6")),
    Cloud("mistral", "mistral-small-latest", _r("0.15", "0.015", "0.6"), reasoning=False),
    Cloud("deepseek", "deepseek-chat", None),
    Cloud("groq", "openai/gpt-oss-120b", _r("0.15", "0.075", "0.6")),
    Cloud("together_ai", "MiniMaxAI/MiniMax-M3", _r("0.3", "0.06", "1.2"), reasoning=False),
    Cloud("fireworks_ai", "gpt-oss-20b", _r("0.07", "0.035", "0.3")),
    Cloud("xai", "grok-3-mini", _r("0.3", "0.075", "0.5")),
    Cloud("openrouter", "openai/gpt-4o-mini", _r("0.15", "0.075", "0.6")),
    # Sonar: $12 per 1000 requests, the library's one fee (its high search context).
    Cloud("perplexity", "sonar", _r("1", None, "1", "0.012"), caches=False),
    Cloud("cerebras", "gpt-oss-120b", _r("0.35", None, "0.75")),
    Cloud("nvidia_nim", "meta/llama-3.1-8b-instruct", OWN_RATES, reasoning=False,
          params=_OWN_PRICES),
    Cloud("hosted_vllm", "Qwen/Qwen3-8B", OWN_RATES, params=_OWN_PRICES),
    Cloud("lm_studio", "qwen3-4b", OWN_RATES, reasoning=False, params=_OWN_PRICES),
)
BY_FLAVOR = {c.flavor: c for c in CLOUDS}


def expected_cost(cloud: Cloud, props: Mapping[str, Any], when: datetime) -> Decimal | None:
    """The call's price by hand from the Lago event's disjoint buckets; None when a
    nonzero bucket has no price (the event must then say unknown_price)."""
    r = cloud.rates_at(when)
    cached = int(props["cached_input_tokens"])
    if cached and r.cache_read is None:
        return None
    cost = (int(props["uncached_input_tokens"]) * r.input
            + cached * (r.cache_read or Decimal(0))
            + int(props["output_tokens"]) * r.output) / MTOK
    fees = sum(int(v) for k, v in props.items() if k.startswith("search_context_size_"))
    return cost + r.per_call * fees


def entry(cloud: Cloud, fake: FakeCompat, *, group: str | None = None,
          **extra: Any) -> dict[str, Any]:
    base = fake.url if cloud.flavor == "azure" else fake.base_url
    return {"model_name": group or cloud.group, "litellm_params": {
        "model": f"{cloud.flavor}/{cloud.model}", "api_base": base,
        "api_key": UPSTREAM_KEYS[cloud.flavor], **cloud.params, **extra}}


def reset(fake: FakeCompat) -> None:
    """The knobs back to a plain answer between tests."""
    cloud = BY_FLAVOR[fake.flavor.name]
    fake.errors.clear()
    fake.require_api_key = UPSTREAM_KEYS[fake.flavor.name]
    fake.answer_model = cloud.answer_model
    fake.prompt_tokens, fake.cached_tokens = 1000, 0
    fake.completion_tokens, fake.reasoning_tokens = 50, 0
    fake.reasoning_text = ""
    fake.tool_call = None
    fake.chunk_delay = 0.0
    fake.stream_chunks = 3
    fake.drop_connection = None
    fake.cost = None
    fake.sources_used = 0
    fake.search_context_size = "low"
    fake.num_search_queries = fake.citation_tokens = 0
    fake.request_cost = "0.005"
    fake.content_filtered = False
    fake.x_groq_only = False


# LiteLLM's per-request table for Perplexity's fee by search context size (USD).
SEARCH_FEES = {"search_context_size_low": "0.005", "search_context_size_medium": "0.008",
               "search_context_size_high": "0.012"}


def _quirk_models(fakes: Mapping[str, FakeCompat]) -> list[dict[str, Any]]:
    """Further deployments the quirk tests call."""
    pplx = BY_FLAVOR["perplexity"]
    return [
        entry(Cloud("perplexity", "sonar-deep-research", None), fakes["perplexity"],
              group="perplexity-deep"),
        entry(pplx, fakes["perplexity"], group="perplexity-exact",
              search_context_cost_per_query=SEARCH_FEES),
        entry(BY_FLAVOR["azure"], fakes["azure"], group="azure-old",
              api_version="2024-02-01"),
        entry(Cloud("mistral", "mistral-embed", None), fakes["mistral"], group="mistral-embed"),
    ]


@dataclass
class Clouds:
    proxy: RunningProxy
    lago: FakeLago
    fakes: dict[str, FakeCompat]


def start_clouds(tmp: Path, extra_models: list[dict[str, Any]] | None = None
                 ) -> Iterator[Clouds]:
    """Every stand-in, Lago and one proxy with a deployment of each (module fixture)."""
    with FakeLago() as lago:
        fakes: dict[str, FakeCompat] = {}
        runners = [run_in_thread(FakeCompat(c.flavor)) for c in CLOUDS]
        entered = []
        try:
            for runner in runners:
                fake = runner.__enter__()
                entered.append(runner)
                fakes[fake.flavor.name] = fake
            models = [entry(c, fakes[c.flavor]) for c in CLOUDS] + _quirk_models(fakes)
            models += list(extra_models or ())
            cfg = config_dict(models, tmp)
            # The providers' own answers, errors included, as a client sees them when the
            # gateway does not retry (the router has its own tests).
            cfg["router_settings"] = {"num_retries": 0}
            with run_proxy(proxy_settings(tmp, cfg, lago_env(lago))) as proxy:
                yield Clouds(proxy, lago, fakes)
        finally:
            for runner in reversed(entered):
                runner.__exit__(None, None, None)
        assert lago.schema_violations == []


@pytest.fixture(scope="module", name="clouds")
def clouds_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clouds]:
    yield from start_clouds(tmp_path_factory.mktemp("clouds"))


@pytest.fixture(autouse=True, name="reset_fakes")
def reset_fakes_fixture(request: pytest.FixtureRequest) -> None:
    if "clouds" in request.fixturenames:
        for fake in request.getfixturevalue("clouds").fakes.values():
            reset(fake)


# The official SDKs as clients of the module's proxy (a test module imports those it uses).

@pytest.fixture(scope="module", name="client")
def client_fixture(clouds: Clouds) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=clouds.proxy.base_url + "/v1", api_key=MASTER_KEY,
                       max_retries=0) as c:
        yield c


@pytest.fixture(scope="module", name="door")
def door_fixture(clouds: Clouds) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=clouds.proxy.base_url, api_key=MASTER_KEY,
                             max_retries=0) as c:
        yield c
