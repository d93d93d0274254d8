"""OpenAI tool calling with the official client against the default model (Qwen2.5-Coder-1.5B-Instruct).

Started by `tests/python/run.sh --default-model` (after test_default_model.py has fetched the model). The model
is offered a function, calls it, gets the result back and answers from it, streamed and not; `required` and a
named `tool_choice` force a call.
"""

import json
import os

import openai

BASE_URL = os.environ["HEARTH_BASE_URL"]
client = openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key="unused", max_retries=0)
MODEL = "qwen2.5-coder-1.5b-instruct-q4_k_m"

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city, e.g. Hangzhou"}},
                "required": ["city"],
            },
        },
    }
]
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather like in Hangzhou right now?"},
]


def get_weather(city):
    return {"city": city, "temperature_c": 31, "sky": "sunny"}


def ask(stream, messages, **kwargs):
    """One completion: (content, tool calls as (id, name, arguments string), finish_reason)."""
    if not stream:
        completion = client.chat.completions.create(
            model=MODEL, messages=messages, temperature=0, max_tokens=96, **kwargs
        )
        choice = completion.choices[0]
        calls = [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        assert all(c.type == "function" for c in choice.message.tool_calls or [])
        return choice.message.content, calls, choice.finish_reason
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=96, stream=True, **kwargs
    ):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, ["", "", ""])
            entry[0] += call.id or ""
            entry[1] += call.function.name or ""
            entry[2] += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return content or None, [tuple(calls[i]) for i in sorted(calls)], finish


def round_trip(stream):
    content, calls, finish = ask(stream, QUESTION, tools=TOOLS)
    assert finish == "tool_calls", (content, calls, finish)
    assert content is None, content
    assert len(calls) == 1, calls
    call_id, name, arguments = calls[0]
    assert call_id.startswith("call_") and name == "get_weather"
    city = json.loads(arguments)["city"]
    assert "Hangzhou" in city, arguments

    # The result goes back; with tool_choice "none" the model answers in words from it.
    messages = QUESTION + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
        },
        {"role": "tool", "tool_call_id": call_id, "content": json.dumps(get_weather(city))},
    ]
    content, calls, finish = ask(stream, messages, tools=TOOLS, tool_choice="none")
    assert finish == "stop" and calls == [], (content, calls, finish)
    assert "31" in content, content


def test_the_model_calls_a_tool_and_answers_from_its_result():
    round_trip(stream=False)


def test_the_same_round_trip_streamed():
    round_trip(stream=True)


def test_required_and_named_tool_choices_force_a_call():
    hello = [{"role": "user", "content": "Hello! How are you?"}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in ["required", named]:
        for stream in [False, True]:
            content, calls, finish = ask(stream, hello, tools=TOOLS, tool_choice=choice)
            assert finish == "tool_calls" and len(calls) == 1, (choice, stream, content, calls)
            assert calls[0][1] == "get_weather"
            assert isinstance(json.loads(calls[0][2]), dict)


def test_bad_tools_are_400s_naming_the_field():
    try:
        client.chat.completions.create(
            model=MODEL, messages=QUESTION, tools=[{"type": "function", "function": {"name": "no spaces"}}]
        )
    except openai.BadRequestError as err:
        assert err.body["param"] == "tools[0].function.name", err.body
    else:
        raise AssertionError("a tool with a bad name was accepted")
