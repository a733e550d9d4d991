"""A server under hostile input: every malformed or refused request gets one 4xx in OpenAI's error object and the
server keeps answering correctly; a client that disconnects mid-stream frees its slot at once."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import openai
import pytest

from tests.serve.helpers import NAME

KEY = "secret-key"
LIMIT = 4096  # --max-body-bytes
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(start_server):
    return start_server("--api-key", KEY, "--max-body-bytes", str(LIMIT))


def call(server, path: str, body: bytes | None, headers: dict, method: str | None = None) -> tuple[int, dict]:
    """(status, JSON answer) of one request: a POST of `body`, a GET without one."""
    method = method or ("GET" if body is None else "POST")
    request = urllib.request.Request(server.url + path, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def ok(**fields) -> bytes:
    return json.dumps({"model": NAME, "prompt": "hi", "max_tokens": 2, **fields}).encode()


HOSTILE = [  # (path, body, headers, status, the error names this field)
    ("/v1/completions", b"{bad", AUTH, 400, None),
    ("/v1/completions", b"\xff\xfe\x00garbage", AUTH, 400, None),
    ("/v1/completions", b"[1, 2]", AUTH, 400, None),
    ("/v1/completions", b"[" * 2000 + b"]" * 2000, AUTH, 400, None),  # deeper than json can parse
    ("/v1/completions", b"x" * (LIMIT + 1), AUTH, 413, None),
    ("/v1/completions", json.dumps({"prompt": "hi"}).encode(), AUTH, 400, "model"),
    ("/v1/completions", ok(model=5), AUTH, 400, "model"),
    ("/v1/completions", ok(model="gpt-4"), AUTH, 404, "model"),
    ("/v1/completions", ok(model=f"{NAME}@1.5"), AUTH, 400, "model"),
    ("/v1/completions", ok(model=f"{NAME}@-0.5"), AUTH, 400, "model"),
    ("/v1/completions", ok(model=f"{NAME}@nan"), AUTH, 400, "model"),
    ("/v1/completions", ok(model=f"{NAME}@big"), AUTH, 400, "model"),
    ("/v1/completions", ok(model=f"{NAME}@0.01"), AUTH, 400, "model"),  # below what the router reaches
    ("/v1/completions", ok(max_tokens=-1), AUTH, 400, "max_tokens"),
    ("/v1/completions", ok(max_tokens=10**30), AUTH, 400, "max_tokens"),
    ("/v1/completions", ok(max_tokens=1000), AUTH, 400, "max_tokens"),  # beyond the context
    ("/v1/completions", ok(max_tokens="8"), AUTH, 400, "max_tokens"),
    ("/v1/completions", ok(temperature=-1), AUTH, 400, "temperature"),
    ("/v1/completions", ok(temperature="hot"), AUTH, 400, "temperature"),
    ("/v1/completions", ok(top_p=0), AUTH, 400, "top_p"),
    ("/v1/completions", ok(seed="x"), AUTH, 400, "seed"),
    ("/v1/completions", ok(stop=5), AUTH, 400, "stop"),
    ("/v1/completions", ok(stream="yes"), AUTH, 400, "stream"),
    ("/v1/completions", ok(n=3), AUTH, 400, "n"),
    ("/v1/completions", ok(prompt=""), AUTH, 400, "prompt"),
    ("/v1/completions", ok(prompt=[10**9]), AUTH, 400, "prompt"),
    ("/v1/completions", ok(prompt="x" * 200), AUTH, 400, "prompt"),  # longer than the context
    ("/v1/completions", ok(prompt={"a": 1}), AUTH, 400, "prompt"),
    ("/v1/chat/completions", ok(messages="hi"), AUTH, 400, "messages"),
    ("/v1/chat/completions", ok(messages=[{"role": "user"}]), AUTH, 400, "messages"),
    ("/v1/completions", ok(), {"Content-Type": "application/json"}, 401, None),
    ("/v1/completions", ok(), {**AUTH, "Authorization": "Bearer wrong"}, 401, None),
    ("/v1/models", None, {"Authorization": "Basic x"}, 401, None),
    ("/v1/nothing", ok(), AUTH, 404, None),
]


def test_hostile_requests_each_get_one_4xx_and_the_server_still_answers(server):
    client = server.client(api_key=KEY)
    before = client.completions.create(model=NAME, prompt="hello", max_tokens=8, temperature=0)
    for _ in range(15):  # 15 x 34 = 510 requests
        for path, body, headers, status, param in HOSTILE:
            got, answer = call(server, path, body, headers)
            error = answer.get("error", {})
            assert got == status and isinstance(error.get("message"), str) and error["message"], (path, body, got)
            if param is not None:
                assert error["param"] == param and error["message"].startswith(param), error
    after = client.completions.create(model=NAME, prompt="hello", max_tokens=8, temperature=0)
    assert (after.choices[0].text, after.model) == (before.choices[0].text, before.model)
    assert call(server, "/v1/completions", b"", {**AUTH}, method="GET")[0] == 405


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server):
    client = server.client(api_key=KEY)
    prompt, whole = "hello", {"extra_body": {"ignore_eos": True}}  # runs to max_tokens whatever the model says
    aborted = server.metric("elastic_jax:requests_total", 'finish_reason="abort"')
    stream = client.completions.create(model=NAME, prompt=prompt, max_tokens=100, temperature=0, stream=True,
                                       **whole)
    next(iter(stream))
    stream.close()
    for _ in range(600):  # the scheduler frees the row at its next step
        if server.metric("elastic_jax:batch_occupancy") == 0:
            break
        time.sleep(0.05)
    assert server.metric("elastic_jax:batch_occupancy") == 0
    assert server.metric("elastic_jax:requests_total", 'finish_reason="abort"') == aborted + 1
    again = client.completions.create(model=NAME, prompt=prompt, max_tokens=4, temperature=0)
    assert again.choices[0].finish_reason == "length"


def test_unknown_model_error_is_openais_not_found(server):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        server.client(api_key=KEY).completions.create(model="nope", prompt="x", max_tokens=1)
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()
