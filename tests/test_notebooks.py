"""Every notebook in notebooks/ runs top to bottom, for real, as a script in a fresh Python process.

Shell and magic lines (`!...`, `%...`: the Colab install steps) are dropped; the rest of the code cells run in
a temporary working directory, so the notebook's runs/ outputs stay out of the repository.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def notebook_script(path: Path) -> str:
    """The code cells of a notebook as one Python script, without shell (!) and magic (%) lines."""
    cells = json.loads(path.read_text())["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        lines += [line for line in source.splitlines() if not line.lstrip().startswith(("!", "%"))]
        lines.append("")
    return "\n".join(lines)


def check_walkthrough(out: str) -> None:
    """The table has a row per budget, slices shrink with the budget, and transformers agrees on the logits."""
    assert re.search(r"permuted vs original parent: max \|logit difference\| (\S+)", out), out
    assert float(re.search(r"permuted vs original parent: max \|logit difference\| (\S+)", out)[1]) < 1e-4
    assert re.search(r"eval loss (\d+\.\d+)", out), out
    rows = {float(m[1]): (float(m[2]), float(m[3])) for m in
            re.finditer(r"^\s*(\d\.\d\d)\s+\S+K\s+\S+K\s+([\d.]+)%\s+(\d+\.\d+)\s+\d+\.\d+", out, re.M)}
    assert sorted(rows) == [0.4, 0.7, 1.0], out
    assert rows[1.0][0] == 100.0 and rows[0.4][0] < rows[0.7][0] < 100.0, rows
    diff = re.search(r"max \|logits difference\| elastic_jax vs transformers (\S+)", out)
    assert diff, out
    assert float(diff[1]) < 1e-4, diff[0]


CHECKS = {"walkthrough.ipynb": check_walkthrough}


def test_notebooks_are_committed_clean():
    """Valid nbformat-4 JSON with empty outputs, and every notebook has output checks here."""
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        assert nb["nbformat"] == 4, path
        for cell in nb["cells"]:
            assert cell["cell_type"] in ("code", "markdown", "raw"), path
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path}: commit without outputs"
        assert path.name in CHECKS, f"{path.name}: add its output checks to CHECKS"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, tmp_path: Path):
    script = tmp_path / f"{path.stem}.py"
    script.write_text(notebook_script(path))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    CHECKS[path.name](proc.stdout)
