"""/metrics, /healthz and /readyz of a running `hearth serve`, read with Prometheus' own text-format parser.

Started by tests/python/run.sh, which sets HEARTH_BASE_URL and starts the server.
"""

import os
import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families

BASE_URL = os.environ["HEARTH_BASE_URL"]
client = openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key=os.environ.get("HEARTH_API_KEY", "unused"), max_retries=0)


def get(path):
    with urllib.request.urlopen(f"{BASE_URL}{path}", timeout=10) as response:
        return response.status, response.headers.get("content-type", ""), response.read().decode()


def scrape():
    """Every sample as {(name, frozenset(labels)): value}, parsed by prometheus_client (it raises on bad syntax)."""
    status, content_type, text = get("/metrics")
    assert status == 200
    assert content_type.startswith("text/plain"), content_type
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_probes():
    assert get("/healthz")[0] == 200
    assert get("/readyz")[0] == 200


def test_metrics_parse_and_counters_move():
    before = scrape()
    model = client.models.list().data[0].id
    client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hi."}], temperature=0, max_tokens=8
    )
    after = scrape()

    route = "/v1/chat/completions"
    assert value(after, "hearth_http_requests_total", route=route, status="200") == value(
        before, "hearth_http_requests_total", route=route, status="200"
    ) + 1
    assert value(after, "hearth_generation_tokens_total") >= value(before, "hearth_generation_tokens_total") + 1
    assert value(after, "hearth_prompt_tokens_total") > value(before, "hearth_prompt_tokens_total")
    assert value(after, "hearth_time_to_first_token_seconds_count") == value(
        before, "hearth_time_to_first_token_seconds_count"
    ) + 1
    assert value(after, "hearth_time_to_first_token_seconds_bucket", le="+Inf") == value(
        after, "hearth_time_to_first_token_seconds_count"
    )
    # Gauges read from the engine at scrape time.
    assert value(after, "hearth_kv_cache_blocks_total") > 0
    assert value(after, "hearth_queue_depth") == 0
    assert 0 <= value(after, "hearth_kv_cache_usage_ratio") <= 1
