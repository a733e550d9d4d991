"""Every notebook in notebooks/ runs top to bottom in a fresh Jupyter kernel, and the assertions in its cells hold.

The kernel runs in a temporary working directory (the notebooks' runs/ outputs stay out of the repository) with
ELASTIC_JAX_NOTEBOOK_FAST=1, which each notebook reads to shrink its step counts, model and problem counts (the
values a user sees and runs are the notebook's own). Notebooks 02 and 03 start from the tiny elastic checkpoint
that the inference and conversion tests share (tests/conftest.py), passed as ELASTIC_JAX_NOTEBOOK_CHECKPOINT.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.train.helpers import subprocess_env

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
USES_CHECKPOINT = {"02_budget_control.ipynb", "03_to_pytorch.ipynb"}


def _code(cell: dict) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def test_notebooks_are_committed_clean_and_listed():
    """Numbered, valid nbformat-4 JSON with empty outputs; the first code cell installs on Colab only; every
    notebook asserts something and is listed in notebooks/README.md."""
    assert [p.name[:3] for p in NOTEBOOKS] == [f"{i:02d}_" for i in range(1, len(NOTEBOOKS) + 1)], NOTEBOOKS
    readme = (NOTEBOOK_DIR / "README.md").read_text()
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        assert nb["nbformat"] == 4, path
        code = [_code(c) for c in nb["cells"] if c["cell_type"] == "code"]
        for cell in nb["cells"]:
            assert cell["cell_type"] in ("code", "markdown", "raw"), path
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path}: commit without outputs"
        assert 'if "google.colab" in sys.modules' in code[0] and "pip" in code[0], f"{path}: Colab install cell"
        assert any(re.search(r"^\s*assert ", c, re.M) for c in code[1:]), f"{path}: no assertion in its cells"
        assert f"]({path.name})" in readme, f"{path.name}: not listed in notebooks/README.md"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, tmp_path: Path, request):
    import nbformat
    from nbclient import NotebookClient

    env = subprocess_env(ELASTIC_JAX_NOTEBOOK_FAST="1")
    if path.name in USES_CHECKPOINT:
        env["ELASTIC_JAX_NOTEBOOK_CHECKPOINT"] = str(request.getfixturevalue("elastic_checkpoint"))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)  # raises CellExecutionError (the cell, its traceback) when a cell fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert outputs and not [o for o in outputs if o.output_type == "error"], path.name
