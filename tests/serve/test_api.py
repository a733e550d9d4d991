"""`elastic-jax serve` through the official openai client: budgets are models, greedy answers are the engine's,
concurrent streams of mixed budgets are what each request gets alone, chat uses the checkpoint's template."""

from __future__ import annotations

import threading

import pytest

from elastic_jax.data.chat import chat_prompt
from tests.serve.helpers import NAME, engine_text

PROMPTS = ["The answer is", "hello", "1 + 2 =", "<think>", "abc abc abc abc abc abc abc abc abc abc abc"]


@pytest.fixture(scope="module")
def server(start_server):
    return start_server()


def test_models_are_the_trained_budgets_the_full_model_and_auto(server, serve_engine):
    ids = [m.id for m in server.client().models.list().data]
    assert ids == [NAME, *(f"{NAME}@{b!r}" for b in serve_engine.budgets), f"{NAME}@auto"]


def test_every_budget_answers_what_the_engine_generates(server, serve_engine):
    client, tok = server.client(), serve_engine.tokenizer
    for budget in serve_engine.budgets:
        for prompt in ("abc", "1+2"):  # with the bos, 4 tokens: one feed piece, one program to compile per budget
            want = engine_text(serve_engine, tok.encode(prompt, add_bos=True), budget, 12)
            got = client.completions.create(model=f"{NAME}@{budget!r}", prompt=prompt, max_tokens=12, temperature=0)
            assert got.model == f"{NAME}@{budget!r}"
            assert (got.choices[0].text, got.usage.completion_tokens, got.choices[0].finish_reason) == want, budget
    # bare name: the full model; @auto at no load: the full model too, and the answer says so
    for model in (NAME, f"{NAME}@auto"):
        got = client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=4, temperature=0)
        assert got.model == f"{NAME}@{max(serve_engine.budgets)!r}"


def test_chat_uses_the_checkpoints_template(server, serve_engine):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    prompt = chat_prompt(messages, serve_engine.tokenizer)  # the completion of these ids is the engine's (above)
    client = server.client()
    plain = client.completions.create(model=f"{NAME}@0.7", prompt=prompt, max_tokens=8, temperature=0)
    got = client.chat.completions.create(model=f"{NAME}@0.7", messages=messages, max_tokens=8, temperature=0)
    assert (got.choices[0].message.role, got.choices[0].message.content) == ("assistant", plain.choices[0].text)
    assert got.usage.prompt_tokens == len(prompt)
    assert (got.usage.completion_tokens, got.choices[0].finish_reason) == (plain.usage.completion_tokens,
                                                                           plain.choices[0].finish_reason)


def _stream(client, kind: str, **kw) -> tuple[str, str | None, int | None]:
    """(text, finish_reason, completion tokens) of one streamed request."""
    text, finish, usage = [], None, None
    create = client.chat.completions.create if kind == "chat" else client.completions.create
    for chunk in create(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for choice in chunk.choices:
            part = choice.delta.content if kind == "chat" else choice.text
            text.append(part or "")
            finish = choice.finish_reason or finish
    return "".join(text), finish, usage


def test_twelve_concurrent_streams_of_mixed_budgets_equal_their_sequential_answers(server, serve_engine):
    budgets = serve_engine.budgets
    requests = []
    for i in range(12):
        kw = {"model": f"{NAME}@{budgets[i % 3]!r}", "max_tokens": 6 + i, "seed": i,
              "temperature": 0.8 if i % 4 == 1 else 0.0}  # sampled rows keep their own seeded keys in the batch
        if i % 4 == 3:
            requests.append(("chat", {**kw, "messages": [{"role": "user", "content": PROMPTS[i % 5]}]}))
        else:
            requests.append(("text", {**kw, "prompt": PROMPTS[i % 5] * (1 + i % 3)}))
    client = server.client()
    alone = [_stream(client, kind, **kw) for kind, kw in requests]
    together: list = [None] * len(requests)

    def run(i: int) -> None:
        together[i] = _stream(server.client(), requests[i][0], **requests[i][1])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
    assert all(finish in ("stop", "length") and n is not None for _, finish, n in alone)


def test_a_stop_string_ends_the_text_before_it(server, serve_engine):
    client = server.client()
    whole = {"extra_body": {"ignore_eos": True}}  # 12 tokens whatever the model says
    full = client.completions.create(model=NAME, prompt=PROMPTS[1], max_tokens=12, temperature=0, **whole)
    full = full.choices[0].text
    assert full, "12 generated tokens decode to some text"
    # the first character not seen before it (the first one itself when all are alike: an empty text then)
    cut = next((i for i in range(1, len(full)) if full[i] not in full[:i]), 0)
    got = client.completions.create(model=NAME, prompt=PROMPTS[1], max_tokens=12, temperature=0, stop=[full[cut]],
                                    **whole)
    assert (got.choices[0].text, got.choices[0].finish_reason) == (full[:cut], "stop")
