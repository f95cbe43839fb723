"""The Bedrock stand-in is right before tallygate is tested against it: boto3's own
``bedrock-runtime`` and ``sts`` clients accept its answers, and it refuses what AWS refuses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError

from tests.bedrock_support import (
    CLAUDE,
    PROFILE_ARN,
    ROLE_ARN,
    aws_env_fixture,
    boto3_client,
    close_boto3_clients,
)
from tests.fakes.bedrock_server import (
    ACCESS_KEY,
    SECRET_KEY,
    FakeBedrock,
    FakeToolCall,
    event_frame,
    run_in_thread,
)

__all__ = ["aws_env_fixture"]

HELLO = [{"role": "user", "content": [{"text": "Hi"}]}]


@pytest.fixture(name="fake")
def fake_fixture(aws_env: Any) -> Iterator[FakeBedrock]:
    with run_in_thread(FakeBedrock()) as fake:
        try:
            yield fake
        finally:
            close_boto3_clients()


def test_event_frames_parse_back_with_botocore() -> None:
    frame = event_frame({":event-type": "messageStart", ":message-type": "event"},
                        b'{"role":"assistant"}')
    buffer = EventStreamBuffer()
    buffer.add_data(frame[:7])  # a frame in pieces, as the network delivers it
    assert list(buffer) == []
    buffer.add_data(frame[7:] + frame)
    messages = list(buffer)
    assert len(messages) == 2
    assert messages[0].headers == {":event-type": "messageStart", ":message-type": "event"}
    assert messages[0].payload == b'{"role":"assistant"}'


def test_boto3_converse(fake: FakeBedrock) -> None:
    fake.cache_read_tokens, fake.cache_write_tokens, fake.cache_write_1h_tokens = 100, 20, 30
    fake.reasoning_text = "Let me think."
    client = boto3_client(fake)
    answer = client.converse(modelId=CLAUDE, messages=HELLO,
                             system=[{"text": "Be brief."}, {"cachePoint": {"type": "default"}}],
                             inferenceConfig={"maxTokens": 50, "temperature": 0.5})
    content = answer["output"]["message"]["content"]
    assert content[0]["reasoningContent"]["reasoningText"]["text"] == "Let me think."
    assert content[1] == {"text": "Hello from the fake Bedrock."}
    assert answer["stopReason"] == "end_turn"
    usage = answer["usage"]
    assert (usage["inputTokens"], usage["outputTokens"]) == (11, 6)
    assert (usage["cacheReadInputTokens"], usage["cacheWriteInputTokens"]) == (100, 50)
    assert usage["cacheDetails"] == [{"ttl": "5m", "inputTokens": 20},
                                     {"ttl": "1h", "inputTokens": 30}]
    assert usage["totalTokens"] == 11 + 6 + 100 + 50
    assert fake.model_ids == [CLAUDE]
    # botocore percent-encodes the id's ':' and the stand-in saw it that way
    assert fake.raw_paths == [f"/model/{CLAUDE.replace(':', '%3A')}/converse"]


def test_boto3_converse_stream_with_a_tool_call(fake: FakeBedrock) -> None:
    fake.tool_call = FakeToolCall("get_weather", {"city": "Paris"}, id="tooluse_1")
    client = boto3_client(fake)
    tools = {"tools": [{"toolSpec": {"name": "get_weather",
                                     "inputSchema": {"json": {"type": "object"}}}}]}
    answer = client.converse_stream(modelId=CLAUDE, messages=HELLO, toolConfig=tools)
    events = list(answer["stream"])
    answer["stream"].close()
    names = [next(iter(e)) for e in events]
    assert names[0] == "messageStart" and names[-2:] == ["messageStop", "metadata"]
    text = "".join(e["contentBlockDelta"]["delta"].get("text", "") for e in events
                   if "contentBlockDelta" in e)
    assert text == "Hello from the fake Bedrock."
    starts = [e["contentBlockStart"] for e in events if "contentBlockStart" in e]
    assert starts[0]["start"]["toolUse"] == {"toolUseId": "tooluse_1", "name": "get_weather"}
    args = "".join(e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events
                   if "toolUse" in e.get("contentBlockDelta", {}).get("delta", {}))
    assert orjson.loads(args) == {"city": "Paris"}
    assert events[-2]["messageStop"]["stopReason"] == "tool_use"
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 6


def test_boto3_sees_an_in_stream_exception(fake: FakeBedrock) -> None:
    fake.stream_exception = "throttlingException"
    answer = boto3_client(fake).converse_stream(modelId=CLAUDE, messages=HELLO)
    seen = []
    with pytest.raises(EventStreamError) as info:
        for event in answer["stream"]:
            seen.append(event)
    answer["stream"].close()
    assert info.value.response["Error"]["Code"] == "throttlingException"
    assert any("contentBlockDelta" in e for e in seen)  # text came before the failure


def test_boto3_invoke_model_embeddings(fake: FakeBedrock) -> None:
    client = boto3_client(fake)
    titan = client.invoke_model(modelId="amazon.titan-embed-text-v2:0",
                                body=orjson.dumps({"inputText": "two words", "dimensions": 256}),
                                contentType="application/json", accept="application/json")
    parsed = orjson.loads(titan["body"].read())
    assert len(parsed["embedding"]) == 256 and parsed["inputTextTokenCount"] == 3
    cohere = client.invoke_model(modelId="cohere.embed-english-v3",
                                 body=orjson.dumps({"texts": ["a", "b"],
                                                    "input_type": "search_document"}))
    parsed = orjson.loads(cohere["body"].read())
    assert len(parsed["embeddings"]) == 2 and parsed["texts"] == ["a", "b"]


def test_boto3_arn_model_id_is_signed_as_sent(fake: FakeBedrock) -> None:
    boto3_client(fake).converse(modelId=PROFILE_ARN, messages=HELLO)
    assert fake.model_ids == [PROFILE_ARN]
    assert "%3A" in fake.raw_paths[0] and "%2F" in fake.raw_paths[0]


def test_wrong_secret_is_refused_like_aws(fake: FakeBedrock) -> None:
    client = boto3_client(fake, secret="not-the-secret")
    with pytest.raises(ClientError) as info:
        client.converse(modelId=CLAUDE, messages=HELLO)
    err = info.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert err["Error"]["Code"] == "InvalidSignatureException"
    assert "signature we calculated does not match" in err["Error"]["Message"]
    with pytest.raises(ClientError) as info:
        boto3_client(fake, access_key="AKIAUNKNOWN000000000").converse(modelId=CLAUDE,
                                                                      messages=HELLO)
    assert info.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_errors_carry_aws_error_types(fake: FakeBedrock) -> None:
    fake.fail(429, "Too many requests, please wait before trying again.")
    with pytest.raises(ClientError) as info:
        boto3_client(fake).converse(modelId=CLAUDE, messages=HELLO)
    assert info.value.response["Error"]["Code"] == "ThrottlingException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    fake.fail(400, "The model returned the following errors: bad", error_type="ValidationException")
    with pytest.raises(client_error("ValidationException")):
        boto3_client(fake).converse(modelId=CLAUDE, messages=HELLO)


def client_error(code: str) -> Any:
    import boto3

    client = boto3.client("bedrock-runtime", region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="y")
    client.close()
    return client.exceptions.from_code(code)


def signed(fake: FakeBedrock, path: str, body: bytes) -> tuple[str, dict[str, str]]:
    url = fake.url + path
    request = AWSRequest(method="POST", url=url, data=body,
                         headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "bedrock", fake.region).add_auth(request)
    return url, dict(request.headers.items())


def test_unknown_members_and_bad_unions_are_refused(fake: FakeBedrock) -> None:
    import urllib.error
    import urllib.request

    path = f"/model/{CLAUDE.replace(':', '%3A')}/converse"
    for body, expected in (
            ({"messages": HELLO, "temperature": 1}, "body.temperature: unknown member"),
            ({"messages": [{"role": "user", "content": [{"text": "a", "image": {}}]}]},
             "a union takes exactly one member"),
            ({"messages": [{"role": "user", "content": [{"text": "a"}]}],
              "inferenceConfig": {"maxTokens": "ten"}}, "expected an integer")):
        raw = orjson.dumps(body)
        url, headers = signed(fake, path, raw)
        request = urllib.request.Request(url, data=raw, headers=headers, method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == 400
        assert info.value.headers["x-amzn-errortype"].startswith("ValidationException:")
        assert expected in orjson.loads(info.value.read())["message"]
        info.value.close()


def test_boto3_sts_assume_role_then_bedrock(fake: FakeBedrock) -> None:
    fake.roles.add(ROLE_ARN)
    sts = boto3_client(fake, "sts")
    creds = sts.assume_role(RoleArn=ROLE_ARN, RoleSessionName="s1", ExternalId="ext-9")
    c = creds["Credentials"]
    assert c["AccessKeyId"].startswith("ASIA") and c["SessionToken"]
    assert fake.sts_calls[0].session_name == "s1" and fake.sts_calls[0].external_id == "ext-9"
    temp = boto3_client(fake, access_key=c["AccessKeyId"], secret=c["SecretAccessKey"],
                        token=c["SessionToken"])
    assert temp.converse(modelId=CLAUDE, messages=HELLO)["stopReason"] == "end_turn"
    # the same key without its session token is refused
    bare = boto3_client(fake, access_key=c["AccessKeyId"], secret=c["SecretAccessKey"])
    with pytest.raises(ClientError) as info:
        bare.converse(modelId=CLAUDE, messages=HELLO)
    assert info.value.response["Error"]["Code"] == "UnrecognizedClientException"
    with pytest.raises(ClientError) as info:
        sts.assume_role(RoleArn="arn:aws:iam::123456789012:role/other", RoleSessionName="s2")
    assert info.value.response["Error"]["Code"] == "AccessDenied"
