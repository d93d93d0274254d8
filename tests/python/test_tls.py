"""The official OpenAI Python client against `hearth serve --tls-cert … --tls-key …`.

Started by `tests/python/run.sh --tls`, which makes a self-signed certificate for 127.0.0.1, starts the server with
it and sets HEARTH_BASE_URL (https://127.0.0.1:PORT) and HEARTH_TLS_CERT (the certificate, the only one trusted).
"""

import os
import ssl

import openai
import pytest

BASE_URL = os.environ["HEARTH_BASE_URL"]
CERT = os.environ["HEARTH_TLS_CERT"]


def client(base_url=BASE_URL, trusted=True):
    """A client trusting only hearth's certificate, or (trusted=False) only the system's roots."""
    verify = ssl.create_default_context(cafile=CERT) if trusted else True
    return openai.OpenAI(
        base_url=f"{base_url}/v1",
        api_key="unused",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(verify=verify, timeout=30),
    )


def test_chat_completion_over_tls():
    tls = client()
    model = tls.models.list().data[0].id
    completion = tls.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens > 0


def test_streaming_over_tls():
    tls = client()
    model = tls.models.list().data[0].id
    stream = tls.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Count to three."}], max_tokens=8, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text


def test_an_untrusted_certificate_is_refused():
    with pytest.raises(openai.APIConnectionError):
        client(trusted=False).models.list()


def test_plain_http_gets_no_answer():
    with pytest.raises(openai.APIConnectionError):
        client(base_url=BASE_URL.replace("https://", "http://")).models.list()
