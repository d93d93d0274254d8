"""Structured output (`response_format`) through the official OpenAI client against a running `hearth serve`.

Every answer under a JSON schema must parse and validate against that schema (Python's `jsonschema`), on 50
prompt and schema pairs, streamed and not; an answer cut by `max_tokens` ends with `finish_reason: "length"`;
a schema the engine cannot enforce is a 400 naming `response_format`. Started by tests/python/run.sh.
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

BASE_URL = os.environ["HEARTH_BASE_URL"]
client = openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key=os.environ.get("HEARTH_API_KEY", "unused"), max_retries=0)

NAME = {"type": "string", "maxLength": 20}

# Ten schemas (objects, arrays, enums, numbers, nesting, required and optional keys), five prompts each.
SCHEMAS = [
    (
        "person",
        {
            "type": "object",
            "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 130}},
            "required": ["name", "age"],
            "additionalProperties": False,
        },
        ["a famous scientist", "your best friend", "a character from a fairy tale", "a football player", "a chef"],
    ),
    (
        "colour",
        {"type": "string", "enum": ["red", "green", "blue", "yellow", "black", "white"]},
        ["the colour of the sky", "the colour of grass", "the colour of snow", "a ripe banana", "coal"],
    ),
    (
        "numbers",
        {"type": "array", "items": {"type": "integer", "minimum": -100, "maximum": 100}, "minItems": 1, "maxItems": 5},
        ["three prime numbers", "the first four even numbers", "some negative numbers", "dice rolls", "ages of kids"],
    ),
    (
        "measurement",
        {
            "type": "object",
            "properties": {
                "value": {"type": "number", "minimum": 0, "maximum": 10000},
                "unit": {"type": "string", "enum": ["m", "kg", "s", "km", "g"]},
            },
            "required": ["value", "unit"],
            "additionalProperties": False,
        },
        ["the height of a door", "the weight of a cat", "a marathon distance", "a minute", "an apple's weight"],
    ),
    (
        "address",
        {
            "type": "object",
            "properties": {
                "city": NAME,
                "location": {
                    "type": "object",
                    "properties": {"country": NAME, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["country", "zip"],
                    "additionalProperties": False,
                },
            },
            "required": ["city", "location"],
            "additionalProperties": False,
        },
        ["Paris", "Tokyo", "a small village", "the capital of Italy", "where you live"],
    ),
    (
        "flag",
        {"type": "boolean"},
        ["is water wet", "is the earth flat", "do cats bark", "is seven a prime", "can fish fly"],
    ),
    (
        "todo",
        {
            "type": "object",
            "properties": {
                "title": NAME,
                "done": {"type": "boolean"},
                "priority": {"type": "integer", "enum": [1, 2, 3]},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
            },
            "required": ["title", "done", "priority"],
            "additionalProperties": False,
        },
        ["buying milk", "writing a report", "calling mum", "fixing the bike", "a dentist visit"],
    ),
    (
        "pairs",
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"word": {"type": "string", "maxLength": 12}, "letters": {"type": "integer", "minimum": 0, "maximum": 30}},
                "required": ["word", "letters"],
                "additionalProperties": False,
            },
            "minItems": 1,
            "maxItems": 3,
        },
        ["two animals", "fruits", "three colours", "days of the week", "planets"],
    ),
    (
        "choice",
        {
            "anyOf": [
                {"type": "object", "properties": {"yes": {"type": "boolean"}}, "required": ["yes"], "additionalProperties": False},
                {"type": "integer", "minimum": 0, "maximum": 9},
            ]
        },
        ["answer yes or no", "pick a digit", "should I sleep", "how many legs has a bird", "is it raining"],
    ),
    (
        "rating",
        {
            "type": "object",
            "properties": {
                "item": {"type": "string", "enum": ["book", "film", "song", "game"]},
                "stars": {"type": "integer", "minimum": 1, "maximum": 5},
                "comment": {"type": "string", "maxLength": 16},
            },
            "required": ["item", "stars"],
            "additionalProperties": False,
        },
        ["a book you like", "a film", "a song", "a video game", "a bad film"],
    ),
]

CASES = [(name, schema, topic) for name, schema, topics in SCHEMAS for topic in topics]


def model_name():
    return client.models.list().data[0].id


def response_format(name, schema):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def ask(case, stream):
    name, schema, topic = case
    request = dict(
        model=MODEL,
        messages=[{"role": "user", "content": f"Answer in JSON about {topic}."}],
        temperature=0,
        max_tokens=128,
        response_format=response_format(name, schema),
    )
    if not stream:
        choice = client.chat.completions.create(**request).choices[0]
        return choice.message.content, choice.finish_reason
    chunks = list(client.chat.completions.create(stream=True, **request))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, finish[-1]


MODEL = model_name()


def test_there_are_fifty_varied_cases():
    assert len(CASES) == 50
    kinds = {json.dumps(schema.get("type")) for _, schema, _ in CASES}
    assert {'"object"', '"array"', '"string"', '"boolean"'} <= kinds


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_every_answer_parses_and_validates_against_its_schema(stream):
    # Eight at a time: the engine batches them, and the mask is applied per sequence.
    cases = CASES if not stream else CASES[::5]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda case: ask(case, stream), cases))
    for (name, schema, topic), (text, finish) in zip(cases, answers):
        assert finish == "stop", f"{name}/{topic}: {finish} {text!r}"
        value = json.loads(text)
        jsonschema.validate(value, schema)


def test_json_object_is_an_object_and_a_cut_answer_ends_with_length():
    request = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a cat in JSON."}],
        temperature=0,
        response_format={"type": "json_object"},
    )
    cut = client.chat.completions.create(max_tokens=4, **request).choices[0]
    assert cut.finish_reason == "length"
    assert cut.message.content.startswith("{")
    whole = client.chat.completions.create(max_tokens=128, **request).choices[0]
    if whole.finish_reason == "stop":
        assert isinstance(json.loads(whole.message.content), dict)
    else:
        assert whole.finish_reason == "length"


def test_a_schema_the_engine_cannot_enforce_is_a_400_naming_response_format():
    for schema in [{"$ref": "https://example.com/schema.json"}, {"type": "integer", "minimum": 5, "maximum": 2}]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=8,
                response_format=response_format("bad", schema),
            )
        assert caught.value.status_code == 400
        assert caught.value.body["param"] == "response_format", caught.value.body
