"""The @auto policy and the incremental text of a stream, without a server: pure Python, no device."""

from __future__ import annotations

from elastic_jax.serve.policy import AutoScaler
from elastic_jax.serve.textstream import TextStream


def test_auto_steps_down_under_load_and_back_up_when_arrivals_fall():
    changes = []
    scaler = AutoScaler([0.4, 1.0, 0.7], slo_tpot_ms=50, window_s=1.0, on_change=lambda *c: changes.append(c))
    assert scaler.budget == 1.0
    scaler.update(load=0, now=0.0)  # opens the first window
    for t in range(10):  # 10 arrivals in a second: 5 requests/s over the two windows the rate is counted in
        scaler.arrived(0.1 * t)
        scaler.observe("tpot", 0.080, now=0.1 * t, since=0.1 * t)  # 80 ms per token against a 50 ms target
    scaler.update(load=12, now=1.0)
    assert scaler.budget == 0.7 and changes[-1][:2] == (1.0, 0.7) and scaler.missed_rate == {0: 5.0}
    scaler.observe("tpot", 0.200, now=1.5, since=0.9)  # arrived before the change: it measured 1.0, not counted
    for t in range(10):
        scaler.arrived(1.0 + 0.1 * t)
    scaler.observe("tpot", 0.030, now=1.5, since=1.2)
    scaler.update(load=3, now=2.0)  # inside the target, but requests still arrive as fast as when 1.0 missed
    assert scaler.budget == 0.7
    scaler.observe("tpot", 0.030, now=2.5, since=1.5)
    scaler.update(load=1, now=3.0)  # 5 requests/s over the last two windows: still too many
    assert scaler.budget == 0.7
    scaler.update(load=0, now=4.0)  # none arrived in the last two windows
    assert scaler.budget == 1.0 and len(changes) == 2


def test_an_idle_server_returns_to_the_full_budget():
    scaler = AutoScaler([1.0, 0.7, 0.4], slo_ttft_ms=100, window_s=1.0)
    scaler.update(load=0, now=0.0)
    scaler.observe("ttft", 5.0, now=0.5)  # e.g. a compilation: nothing arrived in the rate's windows
    scaler.update(load=2, now=1.0, waiting=2)
    assert scaler.budget == 0.7 and scaler.missed_rate == {0: 0.0}
    scaler.update(load=3, now=2.0)  # requests in the server, none measured since the change: no evidence yet
    assert scaler.budget == 0.7
    scaler.update(load=0, now=3.0)
    assert scaler.budget == 1.0


def test_a_late_first_token_steps_down_only_while_the_queue_is_there_and_not_shrinking():
    scaler = AutoScaler([1.0, 0.7, 0.4], slo_ttft_ms=1000, window_s=1.0)
    scaler.update(load=0, now=0.0)
    late = lambda t: scaler.observe("ttft", 3.0, now=t, since=t - 0.1)

    late(0.5)
    scaler.update(load=6, now=1.0, waiting=0)  # nobody waits: a smaller budget would serve nobody sooner
    assert scaler.budget == 1.0
    late(1.5)
    scaler.update(load=12, now=2.0, waiting=4)  # a queue that grew from none
    assert scaler.budget == 0.7
    late(2.5)
    scaler.update(load=10, now=3.0, waiting=2)  # 0.7 works off the queue 1.0 left: give it time
    assert scaler.budget == 0.7
    late(3.5)
    scaler.update(load=12, now=4.0, waiting=3)  # the queue grows again: 0.7 does not keep up either
    assert scaler.budget == 0.4


def test_auto_without_targets_is_the_largest_budget():
    scaler = AutoScaler([1.0, 0.7, 0.4])
    for t in range(5):
        scaler.observe("ttft", 10.0, now=t)
        scaler.update(load=100, now=t)
    assert scaler.budget == 1.0


def test_a_stop_string_split_over_tokens_ends_the_text_before_it():
    stream = TextStream(lambda ids: bytes(ids).decode("utf-8", errors="replace"), stops=["END"])
    out = [stream.push(list(b"ab")), stream.push(list(b"cE")), stream.push(list(b"N")), stream.push(list(b"Dxyz"))]
    assert "".join(out) + stream.flush() == "abc" and stream.stopped


def test_an_unfinished_character_is_held_back_until_complete():
    stream = TextStream(lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    e_acute = list("é".encode())
    assert stream.push([ord("a"), e_acute[0]]) == "a"
    assert stream.push([e_acute[1]]) == "é"
    assert stream.flush() == ""
