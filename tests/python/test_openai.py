"""The official OpenAI Python client against a running `hearth serve`.

Started by tests/python/run.sh, which sets HEARTH_BASE_URL (http://127.0.0.1:PORT) and starts the server.
"""

import json
import os
import time
import urllib.request

import openai
import pytest

BASE_URL = os.environ["HEARTH_BASE_URL"]
client = openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key=os.environ.get("HEARTH_API_KEY", "unused"), max_retries=0)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def health():
    with urllib.request.urlopen(f"{BASE_URL}/health", timeout=10) as response:
        return json.load(response)


def model_name():
    return client.models.list().data[0].id


def test_models_lists_one_model():
    models = client.models.list().data
    assert len(models) == 1
    assert models[0].id == "SmolLM2-135M-Instruct.Q4_1"
    assert models[0].owned_by == "hearth"


def test_chat_non_streaming():
    completion = client.chat.completions.create(model=model_name(), messages=QUESTION, temperature=0, max_tokens=24)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert 1 <= usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_streaming_matches_non_streaming():
    stream = client.chat.completions.create(
        model=model_name(),
        messages=QUESTION,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens >= 1

    whole = client.chat.completions.create(model=model_name(), messages=QUESTION, temperature=0, max_tokens=24)
    assert text == whole.choices[0].message.content
    assert usage_chunk.usage.completion_tokens == whole.usage.completion_tokens


def test_completions_endpoint():
    completion = client.completions.create(model=model_name(), prompt="The capital of France is", max_tokens=8, temperature=0)
    assert completion.object == "text_completion"
    assert completion.choices[0].text
    assert completion.usage.completion_tokens <= 8


def test_bad_parameter_is_a_bad_request_error():
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model_name(), messages=QUESTION, temperature=1e9)
    assert caught.value.status_code == 400
    assert caught.value.param == "temperature"
    assert "temperature" in caught.value.message


def test_disconnect_mid_stream_cancels_the_request():
    before = health()
    stream = client.chat.completions.create(
        model=model_name(),
        messages=[{"role": "user", "content": "Tell me a very long story."}],
        max_tokens=400,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    received = 0
    for _chunk in stream:
        received += 1
        if received == 3:
            break
    stream.close()  # Hang up mid-stream.

    deadline = time.monotonic() + 60
    while True:
        now = health()
        if now["requests_cancelled"] > before["requests_cancelled"] and now["running"] == 0:
            break
        assert time.monotonic() < deadline, f"request not cancelled: {now}"
        time.sleep(0.05)
    assert now["generated_tokens_total"] - before["generated_tokens_total"] < 400
