"""Issue 15 part 4: the loop-lag sampler the benchmark turns on sees a stalled loop."""

from __future__ import annotations

import time
from pathlib import Path

from tallygate.proxy.loop_lag import ENV
from tallygate.proxy.server import GC_THRESHOLDS
from tests.fault_support import mock_config
from tests.proxy_harness import (
    MASTER_KEY,
    cli_env,
    http,
    proxy_settings,
    run_cli,
    run_proxy,
    wait_for,
)


async def _stall(seconds: float) -> None:
    time.sleep(seconds)  # noqa: ASYNC251  (holding the loop is the point of this test)


def test_sampler_measures_a_stall_and_resets(tmp_path: Path) -> None:
    cfg = mock_config(tmp_path, lago=False)
    with run_proxy(proxy_settings(tmp_path, cfg, {ENV: "1"})) as proxy:
        url = proxy.base_url + "/debug/loop-lag"
        wait_for(lambda: http("GET", url).json()["samples"] > 5)
        http("GET", url + "?reset=1")  # the start-up's own work is not the quiet loop
        wait_for(lambda: http("GET", url).json()["samples"] > 20)
        quiet = http("GET", url + "?reset=1").json()
        # Margins wide enough for a shared, noisy machine (a stolen CPU slice is lag too).
        assert quiet["max_ms"] < 100, quiet
        proxy.call(_stall(0.25))
        wait_for(lambda: http("GET", url).json()["samples"] > 5)
        stalled = http("GET", url + "?reset=1").json()
        assert stalled["max_ms"] >= 150 and stalled["over_0_5ms"] >= 1, stalled
        assert http("GET", url, key=None).status == 401   # the master key only
        assert http("GET", url).json()["samples"] < stalled["samples"] + 50
        # Off: no probe runs (the benchmark's speed passes); on again: they do.
        assert http("GET", url + "?sampling=off&reset=1").json()["sampling"] is False
        time.sleep(0.2)
        assert http("GET", url).json()["samples"] == 0
        assert http("GET", url + "?sampling=on").json()["sampling"] is True
        wait_for(lambda: http("GET", url).json()["samples"] > 5)
        assert http("GET", url + "?sampling=sometimes").status == 400


def test_no_sampler_unless_asked(tmp_path: Path) -> None:
    with run_proxy(proxy_settings(tmp_path, mock_config(tmp_path, lago=False))) as proxy:
        assert proxy.gateway.loop_lag is None
        assert http("GET", proxy.base_url + "/debug/loop-lag", key=MASTER_KEY).status == 404


def test_the_served_process_keeps_start_up_objects_out_of_the_collector(
        tmp_path: Path) -> None:
    """``tallygate`` freezes what start-up made (gc.freeze): a full collection walks only
    what calls made since, not the tens of thousands of long-lived objects; and its
    young-generation passes are spaced for a server's allocation rate."""
    cfg = mock_config(tmp_path, lago=False)
    with run_cli(tmp_path, cfg, cli_env({ENV: "1"})) as proc:
        url = proc.base_url + "/debug/loop-lag"
        figures = http("GET", url, key=MASTER_KEY).json()
        assert figures["gc_frozen"] > 10_000, figures
        assert figures["gc_thresholds"] == list(GC_THRESHOLDS)  # young passes far apart
        assert len(figures["gc_collections"]) == 3
