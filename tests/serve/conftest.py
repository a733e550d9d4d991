"""One real `elastic-jax serve` subprocess per test module over the shared tiny elastic checkpoint
(tests/conftest.py), and the engine its answers are compared with."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.serve.helpers import Server


@pytest.fixture(scope="module")
def start_server(elastic_checkpoint, tmp_path_factory) -> Iterator:
    """start_server(*args): a server of this module (stopped at the module's end)."""
    servers: list[Server] = []

    def start(*args: str) -> Server:
        servers.append(Server(elastic_checkpoint, list(args), tmp_path_factory.mktemp("serve") / "server.log"))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def serve_engine(elastic_checkpoint):
    from elastic_jax.inference.engine import Engine

    return Engine.load(elastic_checkpoint)
