"""A small program written for LiteLLM's ``Router``; only its import line is swapped.

One model group has a deployment that refuses connections (tried first, ``order: 1``)
and a healthy one; another group's only deployment answers 500 and falls back to a
third group. Every deployment has its own price, so a bill says which one answered.
"""

from __future__ import annotations

from typing import Any

import tallygate as litellm  # was: import litellm

MESSAGES = [{"role": "user", "content": "Say hello."}]
# USD per token, each deployment its own (input, output).
PRICES = {"dead": ("0.000009", "0.000009"), "healthy": ("0.000001", "0.000002"),
          "broken": ("0.000008", "0.000008"), "backup": ("0.000003", "0.000004"),
          "embed": ("0.0000005", "0")}


def entry(name: str, model: str, base: str, model_id: str, **params: Any) -> dict[str, Any]:
    price_in, price_out = PRICES[model_id]
    return {"model_name": name,
            "litellm_params": {"model": model, "api_base": base, "api_key": "sk-test",
                               "input_cost_per_token": price_in,
                               "output_cost_per_token": price_out, **params},
            "model_info": {"id": model_id}}


def main(healthy_base: str, broken_base: str, dead_base: str, customer: str
         ) -> dict[str, Any]:
    litellm.success_callback = ["lago"]
    router = litellm.Router(
        model_list=[
            entry("gpt-4o-mini", "openai/gpt-4o-mini", dead_base, "dead", order=1),
            entry("gpt-4o-mini", "openai/gpt-4o-mini", healthy_base, "healthy", order=2),
            entry("flaky", "openai/gpt-4o-mini", broken_base, "broken"),
            entry("backup", "openai/gpt-4o-mini", healthy_base, "backup"),
            entry("embed", "openai/text-embedding-3-small", healthy_base, "embed"),
        ],
        routing_strategy="simple-shuffle", num_retries=2, allowed_fails=0,
        cooldown_time=60, timeout=10, fallbacks=[{"flaky": ["backup"]}])
    out: dict[str, Any] = {"answers": {}, "responses": []}

    def keep(name: str, response: Any, answer: Any) -> None:
        out["answers"][name] = answer
        out["responses"].append((name, response))

    r = router.completion(model="gpt-4o-mini", messages=MESSAGES, user=customer)
    keep("chat", r, r.choices[0].message.content)
    r = router.completion(model="gpt-4o-mini", messages=MESSAGES, user=customer)
    keep("chat_again", r, r.choices[0].message.content)  # the dead one is cooling down
    r = router.completion(model="flaky", messages=MESSAGES, user=customer)
    keep("fallback", r, r.choices[0].message.content)

    stream = router.completion(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                               stream_options={"include_usage": True}, user=customer)
    built = litellm.stream_chunk_builder(list(stream), messages=MESSAGES)
    keep("stream", stream, built.choices[0].message.content)

    r = router.embedding(model="embed", input=["hello"], user=customer)
    keep("embedding", r, len(r.data[0].embedding))
    r = router.responses(model="gpt-4o-mini", input="Say hello.", user=customer)
    keep("responses", r, r.output[-1].content[0].text)
    r = router.text_completion(model="backup", prompt="Say hello.", user=customer)
    keep("text_completion", r, r.choices[0].text)
    out["model_names"] = router.get_model_names()
    return out
