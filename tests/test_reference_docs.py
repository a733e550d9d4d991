"""docs/reference.md is generated from the CLI parser and the config tree; it must match the code."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from elastic_jax import reference
from elastic_jax.cli import VERBS
from elastic_jax.experiment import ExperimentConfig

PAGE = Path(__file__).resolve().parent.parent / "docs" / "reference.md"


@pytest.fixture(scope="module")
def generated() -> str:
    return reference.render()


def test_reference_page_is_current(generated):
    assert PAGE.exists(), f"docs/reference.md is missing; write it with `{reference.COMMAND}`"
    assert PAGE.read_text() == generated, (
        f"docs/reference.md is stale (the CLI or a config section changed); regenerate it with `{reference.COMMAND}`")


def test_every_verb_and_config_field_is_documented(generated):
    page = generated
    for name in VERBS:
        assert f"### elastic-jax {name}\n" in page
    assert reference.missing_descriptions(ExperimentConfig) == [], (
        "config fields without a description: give each a `#: text` comment on its line, "
        "metadata={'help': ...}, or a `name: text` entry in its section's docstring")
    for knob in ("metric", "heterogeneous", "tolerance", "num_choices", "static_after"):
        assert f"**`elastic.{'' if knob == 'static_after' else 'router.'}{knob}`**" in page


@dataclasses.dataclass(frozen=True)
class _Example:
    """An example section.

    from_doc / also_doc: described here,
        and continued here.
    """

    from_doc: int = 0
    also_doc: int = 1
    from_comment: str = "x"  #: described by the comment
    #: described above
    #: over two lines
    from_above: float = 2.0
    from_metadata: int = dataclasses.field(default=3, metadata={"help": "described by metadata"})
    nothing: bool = False


def test_descriptions_come_from_metadata_comments_and_docstring():
    assert reference.descriptions(_Example) == {
        "from_doc": "described here, and continued here",
        "also_doc": "described here, and continued here",
        "from_comment": "described by the comment",
        "from_above": "described above over two lines",
        "from_metadata": "described by metadata",
        "nothing": reference.MISSING,
    }
