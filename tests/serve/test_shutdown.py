"""A server at its limits and at its end: a full queue answers 429 with Retry-After; SIGTERM with streams in flight
lets each stream end with a finish_reason and `data: [DONE]`, and the process exits 0."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from tests.serve.helpers import NAME


@pytest.fixture(scope="module")
def server(start_server):
    return start_server("--slots", "1", "--max-waiting", "1", "--budgets", "1.0")


def open_stream(server, prompt: str, max_tokens: int):
    body = json.dumps({"model": NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True})
    request = urllib.request.Request(f"{server.url}/v1/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=600)


def read_events(response, out: list) -> None:
    """Every SSE data line of a stream, [DONE] included, into `out`."""
    for line in response:
        if line.startswith(b"data: "):
            out.append(line[6:].strip().decode())


def test_a_full_queue_answers_429_and_sigterm_ends_every_stream_then_exit_0(server):
    running = open_stream(server, "hello", 120)  # takes the only slot for 120 tokens
    first = running.readline()
    while not first.startswith(b"data: "):  # its first tokens: it holds the slot now
        first = running.readline()
    waiting = open_stream(server, "abc", 100)  # the one request the queue holds while the slot is taken
    with pytest.raises(urllib.error.HTTPError) as refused:
        open_stream(server, "x", 2).close()
    events: list[list[str]] = [[first[6:].strip().decode()], []]
    readers = [threading.Thread(target=read_events, args=(r, e)) for r, e in zip((running, waiting), events)]
    for t in readers:
        t.start()
    assert server.stop() == 0  # SIGTERM, then the exit status
    for t in readers:
        t.join()
    for stream in events:
        assert stream[-1] == "[DONE]"
        finishes = [json.loads(e)["choices"][0]["finish_reason"] for e in stream[:-1]]
        assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    assert refused.value.code == 429 and refused.value.headers["Retry-After"] == "1"
    assert "queue is full" in json.loads(refused.value.read())["error"]["message"]
