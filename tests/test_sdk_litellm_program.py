"""A LiteLLM SDK program with only its import swapped (tests/programs/litellm_style.py)
runs against the stand-ins: the stand-ins' answers, and one Lago event per call whose
cost is the Decimal completion_cost returns, computed here by hand."""

from __future__ import annotations

from decimal import Decimal

import tallygate
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.programs import litellm_style
from tests.sdk_fixtures import SdkPaths

M = Decimal(1_000_000)
# genai-prices' list prices (USD per million tokens), by hand:
GPT_4O_MINI = (Decimal("0.15"), Decimal("0.6"))
HAIKU_35 = (Decimal("0.8"), Decimal("4"))
INSTRUCT = (Decimal("1.5"), Decimal("2"))


def tokens(price: tuple[Decimal, Decimal], prompt: int, completion: int) -> Decimal:
    return (prompt * price[0] + completion * price[1]) / M


def test_litellm_program_with_the_import_swapped(sdk: SdkPaths, lago: FakeLago,
                                                 openai_fake: FakeOpenAI,
                                                 anthropic_fake: FakeAnthropic) -> None:
    out = litellm_style.main(openai_fake.base_url, anthropic_fake.base_url, "acme")
    tallygate.flush()
    answers = out["answers"]
    assert answers["chat"] == answers["stream"] == openai_fake.reply_text
    assert answers["claude"] == answers["responses_claude"] == anthropic_fake.reply_text
    assert answers["responses"] == openai_fake.reply_text
    assert answers["embedding"] == openai_fake.embedding_dim
    assert answers["text_completion"]
    assert answers["image"] == 1
    assert answers["transcription"] == openai_fake.media.transcript
    assert answers["speech"] > 0 and answers["moderation"] is False
    claude = dict(out["responses"])["claude"]
    assert claude.dropped_params == ("seed",)  # drop_params: dropped and said, not a 400
    assert out["stream_usage"] == 12 + 7
    assert (out["context"], out["vision"], out["reasoning"], out["tools"]) == (
        128000, True, True, True)
    assert out["tokens"] > 0

    expected = {
        "chat": tokens(GPT_4O_MINI, 12, 7),
        "claude": tokens(HAIKU_35, 12, 7),
        "stream": tokens(GPT_4O_MINI, 12, 7),
        "embedding": openai_fake_embedding_cost(openai_fake),
        "responses": tokens(GPT_4O_MINI, 12, 7),
        "responses_claude": tokens(HAIKU_35, 12, 7),
        "text_completion": tokens(INSTRUCT, 12, 7),
        "image": Decimal("0.12"),                 # dall-e-3, hd, 1024x1792
        "transcription": 9 * Decimal("0.36") / 3600,  # whisper-1, 9 seconds
        "speech": 11 * Decimal("15") / M,         # tts-1, 11 characters
        "moderation": Decimal(0),
    }
    kinds = {"image": "image", "transcription": "transcription", "speech": "speech",
             "moderation": "moderation", "text_completion": "completion",
             "embedding": "embedding"}
    assert [name for name, _ in out["responses"]] == list(expected)
    call_ids = []
    for name, response in out["responses"]:
        event = response.usage_event
        assert event is not None, name
        call_ids.append(event.call_id)
        assert lago.count(event.call_id) == 1, name
        stored = lago.events[event.call_id]
        assert stored.external_subscription_id == "acme"
        props = stored.properties
        assert props["kind"] == kinds.get(name, "chat"), (name, props["kind"])
        assert Decimal(props["response_cost"]) == expected[name], (name, props)
        assert tallygate.completion_cost(completion_response=response) == expected[name]
    assert out["chat_cost"] == expected["chat"]
    assert set(lago.events) == set(call_ids)  # one event per call, nothing else
    assert lago.schema_violations == []


def openai_fake_embedding_cost(fake: FakeOpenAI) -> Decimal:
    # text-embedding-3-small: $0.02 per million tokens; the fake reports its prompt tokens.
    return fake.prompt_tokens * Decimal("0.02") / M
