"""The launch scripts parse (bash -n, YAML) and start the training module they name."""

from __future__ import annotations

import subprocess

import pytest

from tests.train.helpers import REPO

LAUNCH = REPO / "launch"


@pytest.mark.parametrize("name", ["local_multiprocess.sh", "slurm.sbatch", "tpu_vm.sh"])
def test_shell_scripts_parse(name):
    script = LAUNCH / name
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert "elastic_jax.train" in script.read_text()


def test_gke_manifest_is_a_service_and_an_indexed_job():
    import yaml

    docs = list(yaml.safe_load_all((LAUNCH / "gke.yaml").read_text()))
    kinds = [d["kind"] for d in docs]
    assert kinds == ["Service", "Job"]
    job = docs[1]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"]
    env = {e["name"] for e in job["template"]["spec"]["containers"][0]["env"]}
    assert {"ELASTIC_JAX_COORDINATOR", "ELASTIC_JAX_NUM_PROCESSES", "ELASTIC_JAX_PROCESS_ID"} <= env
