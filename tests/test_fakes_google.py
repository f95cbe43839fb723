"""The Google stand-ins are right before tallygate is tested against them: Google's own
``google-genai`` SDK (AI Studio and Vertex mode, with a service account whose token_uri is
the stand-in) and Anthropic's ``AnthropicVertex`` client call them and parse the answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from google.oauth2 import service_account

from tests.fakes.gemini_server import FakeGemini, FakeToolCall
from tests.fakes.server_base import FakeTurn, run_in_thread
from tests.fakes.vertex_server import CLOUD_PLATFORM, FakeVertex
from tests.google_fixtures import (  # noqa: F401  (fixtures)
    rsa_key_fixture,
    vertex_fixture,
)

KEY = "gemini-test-key"


@pytest.fixture
def gemini() -> Iterator[FakeGemini]:
    with run_in_thread(FakeGemini()) as fake:
        fake.require_api_key = KEY
        yield fake


def studio_client(fake: FakeGemini, key: str = KEY) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(
        base_url=fake.url, api_version="v1beta", retry_options=types.HttpRetryOptions(
            attempts=1)))


def test_genai_generate_content_reads_text_and_usage(gemini: FakeGemini) -> None:
    gemini.script.prompt_tokens, gemini.script.cached_tokens = 1200, 1000
    gemini.script.thoughts_tokens = 30
    client = studio_client(gemini)
    answer = client.models.generate_content(
        model="gemini-2.5-flash", contents="Say hello.",
        config=types.GenerateContentConfig(system_instruction="Be brief.", temperature=0.2,
                                           max_output_tokens=50))
    assert answer.text == "Hello from the fake Gemini."
    usage = answer.usage_metadata
    assert usage is not None
    assert (usage.prompt_token_count, usage.cached_content_token_count,
            usage.candidates_token_count, usage.thoughts_token_count) == (1200, 1000, 7, 30)
    assert answer.candidates is not None
    assert answer.candidates[0].finish_reason == types.FinishReason.STOP
    got = gemini.received[-1]
    assert got.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert got.headers["x-goog-api-key"] == KEY
    assert got.body is not None and got.body["systemInstruction"]["parts"] == [
        {"text": "Be brief."}]


def test_genai_stream_is_sse_with_cumulative_usage(gemini: FakeGemini) -> None:
    client = studio_client(gemini)
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash",
                                                        contents="Say hello."))
    assert "".join(c.text or "" for c in chunks) == "Hello from the fake Gemini."
    counts = [c.usage_metadata.candidates_token_count for c in chunks if c.usage_metadata]
    assert counts == sorted(counts) and counts[-1] == 7  # a running total, not parts
    assert gemini.received[-1].path.endswith(":streamGenerateContent")


def test_genai_function_call_and_schema_checks(gemini: FakeGemini) -> None:
    gemini.script.tool_call = FakeToolCall("get_weather", {"city": "Paris"})
    gemini.script.reply_text = ""
    client = studio_client(gemini)
    tool = types.Tool(function_declarations=[types.FunctionDeclaration(
        name="get_weather", description="Weather now", parameters=types.Schema(
            type=types.Type.OBJECT,
            properties={"city": types.Schema(type=types.Type.STRING)}, required=["city"]))])
    answer = client.models.generate_content(
        model="gemini-2.5-flash", contents="Weather in Paris?",
        config=types.GenerateContentConfig(tools=[tool], automatic_function_calling=(
            types.AutomaticFunctionCallingConfig(disable=True))))
    assert answer.function_calls is not None
    assert answer.function_calls[0].name == "get_weather"
    assert answer.function_calls[0].args == {"city": "Paris"}
    # What Gemini refuses, the stand-in refuses, naming the field.
    bad: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                           "tools": [{"functionDeclarations": [{"name": "f", "parameters": {
                               "type": "OBJECT", "properties": {"a": {"type": "STRING"}},
                               "additionalProperties": False}}]}]}
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(model="gemini-2.5-flash", contents="x", config={
            "http_options": {"extra_body": bad}})
    assert caught.value.code == 400
    assert "additionalProperties" in str(caught.value.message)


def test_genai_embed_content(gemini: FakeGemini) -> None:
    client = studio_client(gemini)
    answer = client.models.embed_content(model="gemini-embedding-001",
                                         contents=["one", "two"])
    assert answer.embeddings is not None and len(answer.embeddings) == 2
    assert answer.embeddings[0].values == [0.1, 0.11, 0.12, 0.13]
    assert gemini.received[-1].path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"


def test_genai_errors_are_google_shaped(gemini: FakeGemini) -> None:
    wrong = studio_client(gemini, key="wrong")
    with pytest.raises(genai_errors.ClientError) as caught:
        wrong.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert (caught.value.code, caught.value.status) == (400, "INVALID_ARGUMENT")
    gemini.fail(429, "Resource has been exhausted (e.g. check quota).")
    client = studio_client(gemini)
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert (caught.value.code, caught.value.status) == (429, "RESOURCE_EXHAUSTED")


def test_blocked_prompt_answer_parses(gemini: FakeGemini) -> None:
    gemini.script.block_reason = "SAFETY"
    client = studio_client(gemini)
    answer = client.models.generate_content(model="gemini-2.5-flash", contents="bad")
    assert answer.prompt_feedback is not None
    assert answer.prompt_feedback.block_reason == types.BlockedReason.SAFETY
    assert not answer.candidates


# --- Vertex ----------------------------------------------------------------------------

def credentials(fake: FakeVertex) -> service_account.Credentials:
    return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
        fake.service_account(), scopes=[CLOUD_PLATFORM])


def test_genai_vertex_mode_gets_a_token_and_calls_gemini(vertex: FakeVertex) -> None:
    client = genai.Client(vertexai=True, project="tg-project", location="europe-west4",
                          credentials=credentials(vertex),
                          http_options=types.HttpOptions(base_url=vertex.url, api_version="v1"))
    answer = client.models.generate_content(model="gemini-2.5-flash", contents="Hi")
    assert answer.text == "Hello from the fake Gemini."
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash",
                                                        contents="Hi"))
    assert "".join(c.text or "" for c in chunks) == "Hello from the fake Gemini."
    assert vertex.token_fetches == 1  # the SDK's token, verified and reused
    paths = [r.path for r in vertex.received]
    base = "/v1/projects/tg-project/locations/europe-west4/publishers/google/models/"
    assert paths == [base + "gemini-2.5-flash:generateContent",
                     base + "gemini-2.5-flash:streamGenerateContent"]


def test_vertex_refuses_calls_without_an_issued_token(vertex: FakeVertex) -> None:
    client = genai.Client(vertexai=True, project="tg-project", location="us-central1",
                          credentials=credentials(vertex),
                          http_options=types.HttpOptions(base_url=vertex.url, api_version="v1"))
    client.models.generate_content(model="gemini-2.5-flash", contents="Hi")
    vertex.revoke_tokens()
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(model="gemini-2.5-flash", contents="Hi")
    assert (caught.value.code, caught.value.status) == (401, "UNAUTHENTICATED")


def test_anthropic_vertex_client_calls_claude(vertex: FakeVertex) -> None:
    creds = credentials(vertex)
    from google.auth.transport.requests import Request

    creds.refresh(Request())  # type: ignore[no-untyped-call]
    vertex.claude.input_tokens, vertex.claude.cache_read_tokens = 40, 900
    client = anthropic.AnthropicVertex(region="us-east5", project_id="tg-project",
                                       access_token=creds.token, base_url=vertex.url + "/v1")
    message = client.messages.create(model="claude-sonnet-4-5@20250929", max_tokens=64,
                                     messages=[{"role": "user", "content": "Hi"}])
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from the fake Claude."
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (40, 900)
    got = vertex.received[-1]
    assert got.path == ("/v1/projects/tg-project/locations/us-east5/publishers/anthropic/"
                        "models/claude-sonnet-4-5@20250929:rawPredict")
    assert got.body is not None and "model" not in got.body and got.body["anthropic_version"]
    with client.messages.stream(model="claude-sonnet-4-5@20250929", max_tokens=64,
                                messages=[{"role": "user", "content": "Hi"}]) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "text"
    assert final.content[0].text == "Hello from the fake Claude."
    assert vertex.received[-1].path.endswith(":streamRawPredict")


def test_genai_count_tokens_and_scripted_turns(gemini: FakeGemini) -> None:
    client = studio_client(gemini)
    counted = client.models.count_tokens(model="gemini-2.5-flash", contents="Say hello.")
    assert counted.total_tokens is not None and counted.total_tokens > 0
    assert gemini.received[-1].path == "/v1beta/models/gemini-2.5-flash:countTokens"
    gemini.turns = [FakeTurn("Looking.", FakeToolCall("read_file", {"file_path": "a.txt"})),
                    FakeTurn("Done.")]
    first = client.models.generate_content(model="gemini-2.5-flash", contents="Read a.txt")
    assert first.function_calls is not None
    assert first.function_calls[0].name == "read_file"
    assert first.function_calls[0].args == {"file_path": "a.txt"}
    second = client.models.generate_content(model="gemini-2.5-flash", contents="Go on")
    assert second.text == "Done." and not second.function_calls
