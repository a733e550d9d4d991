"""The inference tests' engine over the shared tiny elastic checkpoint (tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def engine(elastic_checkpoint):
    from elastic_jax.inference.engine import Engine

    return Engine.load(elastic_checkpoint)
