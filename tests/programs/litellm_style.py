"""A small program written for LiteLLM's SDK; only its import line is swapped.

It uses what LiteLLM SDK code commonly calls: completion (plain, streamed with
stream_chunk_builder, to Anthropic with a parameter it does not take under drop_params),
embedding, responses, text_completion, image_generation, transcription, speech,
moderation, completion_cost, token_counter, get_model_info and the supports_* helpers.
"""

from __future__ import annotations

from typing import Any

import tallygate as litellm  # was: import litellm

MESSAGES = [{"role": "user", "content": "Say hello."}]


def main(openai_base: str, anthropic_base: str, customer: str) -> dict[str, Any]:
    litellm.success_callback = ["lago"]
    litellm.drop_params = True
    oai = {"api_base": openai_base, "api_key": "sk-test", "user": customer}
    ant = {"api_base": anthropic_base, "api_key": "sk-ant-test", "user": customer}
    out: dict[str, Any] = {"answers": {}, "responses": []}

    def keep(name: str, response: Any, answer: Any) -> None:
        out["answers"][name] = answer
        out["responses"].append((name, response))

    r = litellm.completion(model="gpt-4o-mini", messages=MESSAGES, **oai)
    keep("chat", r, r.choices[0].message.content)
    out["chat_cost"] = litellm.completion_cost(completion_response=r)

    r = litellm.completion(model="anthropic/claude-3-5-haiku-20241022", messages=MESSAGES,
                           seed=7, max_tokens=50, **ant)  # Anthropic takes no seed
    keep("claude", r, r.choices[0].message.content)

    stream = litellm.completion(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                stream_options={"include_usage": True}, **oai)
    chunks = list(stream)
    built = litellm.stream_chunk_builder(chunks, messages=MESSAGES)
    keep("stream", stream, built.choices[0].message.content)
    out["stream_usage"] = built.usage.total_tokens

    r = litellm.embedding(model="text-embedding-3-small", input=["hello"], **oai)
    keep("embedding", r, len(r.data[0].embedding))

    r = litellm.responses(model="gpt-4o-mini", input="Say hello.", **oai)
    keep("responses", r, r.output[-1].content[0].text)
    r = litellm.responses(model="anthropic/claude-3-5-haiku-20241022", input="Say hello.",
                          max_output_tokens=50, **ant)
    keep("responses_claude", r, r.output[-1].content[0].text)

    r = litellm.text_completion(model="gpt-3.5-turbo-instruct", prompt="Say hello.", **oai)
    keep("text_completion", r, r.choices[0].text)

    r = litellm.image_generation(prompt="a lighthouse", model="dall-e-3", size="1024x1792",
                                 quality="hd", **oai)
    keep("image", r, len(r.data))

    audio = ("talk.mp3", b"\xff\xfb" * 1000, "audio/mpeg")
    r = litellm.transcription(model="whisper-1", file=audio, **oai)
    keep("transcription", r, r.text)

    r = litellm.speech(model="tts-1", input="Hello there", voice="alloy", **oai)
    keep("speech", r, len(r.content))

    r = litellm.moderation(input="hello", model="omni-moderation-latest", **oai)
    keep("moderation", r, r.results[0].flagged)

    out["tokens"] = litellm.token_counter(model="gpt-4o-mini", messages=MESSAGES)
    out["context"] = litellm.get_model_info("gpt-4o-mini")["max_input_tokens"]
    out["vision"] = litellm.supports_vision(model="gpt-4o-mini")
    out["reasoning"] = litellm.supports_reasoning(model="o3-mini")
    out["tools"] = litellm.supports_function_calling(model="gpt-4o-mini")
    return out
