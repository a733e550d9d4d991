"""`elastic-jax serve --draft-budget 0.4` through the official openai client: every larger budget's greedy answer is
the engine's plain greedy answer, token for token, while the smallest budget decodes plainly."""

from __future__ import annotations

from tests.serve.helpers import NAME, engine_text


def test_drafted_greedy_answers_are_plain_decodings(start_server, serve_engine):
    server = start_server("--draft-budget", "0.4", "--draft-tokens", "3", "--slots", "2")
    client, tok = server.client(), serve_engine.tokenizer
    for budget in serve_engine.budgets:  # 1.0 and 0.7 drafted by 0.4; 0.4 itself plain
        for prompt in ("abc", "1+2"):
            want = engine_text(serve_engine, tok.encode(prompt, add_bos=True), budget, 12)
            got = client.completions.create(model=f"{NAME}@{budget!r}", prompt=prompt, max_tokens=12, temperature=0)
            assert got.model == f"{NAME}@{budget!r}"
            assert (got.choices[0].text, got.usage.completion_tokens, got.choices[0].finish_reason) == want, budget
    log = server.log.read_text()
    assert all(f"budget {b:g} drafted by 0.4: acceptance" in log for b in serve_engine.budgets if b > 0.4), log
    assert "budget 0.4 drafted" not in log
