"""The launch scripts start any verb; their 2-host dry-runs print each host's exact command and environment."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.train.helpers import REPO

LAUNCH = REPO / "launch"
SCRIPTS = ["local_multiprocess.sh", "slurm.sbatch", "tpu_vm.sh", "gke.sh"]
# A verb's own arguments, passed through untouched: a space, a quote and a --config override.
ARGS = ["--config", "tiny_elastic", "--parent", "/data/my parent", "--workdir", "/runs/it's", "--config.train.lr=1e-3"]


def _script_argv(name: str, hosts: int) -> tuple[list[str], dict[str, str]]:
    """(argv before VERB, extra environment) to run `name` on `hosts` hosts."""
    names = [f"node-{i}" for i in range(hosts)]
    return {
        "local_multiprocess.sh": ([str(hosts)], {}),
        "slurm.sbatch": ([], {"HOSTS": ",".join(names)}),
        "tpu_vm.sh": (["my-tpu", "us-central2-b"], {"WORKERS": " ".join(f"10.0.0.{i + 2}" for i in range(hosts))}),
        "gke.sh": ([str(hosts)], {"NAME": "ej-run"}),
    }[name]


def _run(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not re.match(r"(JAX_|XLA_|LIBTPU_|TPU_|NCCL_|PJRT_|SLURM_)", k)}
    return subprocess.run(["bash", str(LAUNCH / name), *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=REPO)


def _dry_run(name: str, verb: str, hosts: int = 2, extra_env: dict[str, str] | None = None) -> list[dict | None]:
    """Per host: {'env': {...}, 'argv': [...]} from the script's --dry-run, or None for an idle host."""
    before, env = _script_argv(name, hosts)
    proc = _run(name, "--dry-run", *before, verb, *ARGS, env={**env, **(extra_env or {})})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("# host ")]
    assert [lines[i].split(" of ")[0] for i in headers] == [f"# host {i}" for i in range(hosts)], proc.stdout
    out: list[dict | None] = []
    for i in headers:
        if "idle" in lines[i]:
            out.append(None)
            continue
        words = shlex.split(lines[i + 1])
        assert words[0] == "env"
        assign = [w for w in words[1:] if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w)]
        env_vars = dict(w.split("=", 1) for w in assign)
        out.append({"env": env_vars, "argv": words[1 + len(assign):]})
    return out


@pytest.mark.parametrize("name", SCRIPTS + ["common.sh"])
def test_scripts_parse(name):
    subprocess.run(["bash", "-n", str(LAUNCH / name)], check=True)


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize("verb", ["pretrain", "elastify"])
def test_dry_run_two_hosts_multi_host_verb(name, verb):
    hosts = _dry_run(name, verb, extra_env={"JAX_COMPILATION_CACHE_DIR": "/cache/jax"})
    coordinators = {h["env"]["ELASTIC_JAX_COORDINATOR"] for h in hosts}
    assert len(coordinators) == 1, coordinators
    coordinator = coordinators.pop()
    assert re.fullmatch(r"[^:\s]+:\d+", coordinator)
    expected_host = {"local_multiprocess.sh": "localhost", "slurm.sbatch": "node-0", "tpu_vm.sh": "10.0.0.2",
                     "gke.sh": "ej-run-0.ej-run"}[name]
    assert coordinator.split(":")[0] == expected_host
    for i, host in enumerate(hosts):
        assert host["env"]["ELASTIC_JAX_NUM_PROCESSES"] == "2"
        assert host["env"]["ELASTIC_JAX_PROCESS_ID"] == str(i)
        assert host["env"]["JAX_COMPILATION_CACHE_DIR"] == "/cache/jax"  # the shell's JAX variables travel along
        assert host["argv"] == ["python", "-m", "elastic_jax.cli", verb, *ARGS]
    if name == "local_multiprocess.sh":
        assert hosts[0]["env"]["JAX_PLATFORMS"] == "cpu"
        assert "--xla_force_host_platform_device_count=1" in hosts[0]["env"]["XLA_FLAGS"]


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize("verb", ["importance", "eval"])
def test_dry_run_two_hosts_single_process_verb(name, verb):
    """Single-process verbs run as one process on the first host; the second host stays idle."""
    hosts = _dry_run(name, verb)
    assert hosts[1] is None
    assert hosts[0]["env"]["ELASTIC_JAX_NUM_PROCESSES"] == "1" and hosts[0]["env"]["ELASTIC_JAX_PROCESS_ID"] == "0"
    assert hosts[0]["argv"] == ["python", "-m", "elastic_jax.cli", verb, *ARGS]


@pytest.mark.parametrize("name", SCRIPTS)
def test_missing_verb_is_one_error(name):
    before, env = _script_argv(name, 2)
    proc = _run(name, "--dry-run", *before, "--config", "tiny", env=env)
    assert proc.returncode == 2
    assert "missing VERB" in proc.stderr and proc.stdout == ""


def test_gke_manifest_renders_a_service_and_an_indexed_job():
    import yaml

    def render(verb: str) -> list[dict]:
        proc = _run("gke.sh", "--render", "2", verb, *ARGS,
                    env={"NAME": "ej-run", "IMAGE": "reg/ej:1", "XLA_FLAGS": "--xla_a=1 --b='x'"})
        assert proc.returncode == 0, proc.stderr
        return list(yaml.safe_load_all(proc.stdout))

    service, job = render("elastify")
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["name"] == job["metadata"]["name"] == "ej-run"
    assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == "ej-run"
    container = pod["containers"][0]
    assert container["image"] == "reg/ej:1"
    assert container["command"] == ["python", "-m", "elastic_jax.cli", "elastify", *ARGS]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["ELASTIC_JAX_COORDINATOR"] == "ej-run-0.ej-run:12355"
    assert env["ELASTIC_JAX_NUM_PROCESSES"] == "2"
    assert "job-completion-index" in env["ELASTIC_JAX_PROCESS_ID"]["fieldRef"]["fieldPath"]
    assert env["XLA_FLAGS"] == "--xla_a=1 --b='x'"
    assert render("eval")[1]["spec"]["completions"] == 1


def test_local_script_runs_a_verb(tmp_path):
    """Not a dry-run: the local script starts the CLI (a single-process verb, so one process)."""
    proc = _run("local_multiprocess.sh", "2", "params", "--config", "tiny",
                env={"PYTHON": sys.executable, "PORT": "12399"})
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert re.search(r"\[p0\] total ", proc.stdout) and "[p1]" not in proc.stdout


def _fake_bin(tmp_path):
    """Stand-ins for srun / gcloud / kubectl and a "python" that prints its environment, on a PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        # srun: run the command once per task with SLURM_PROCID set, as SLURM does on each node
        "srun": 'n=1; while [[ "$1" == --* ]]; do [[ "$1" == --ntasks=* ]] && n="${1#--ntasks=}"; shift; done\n'
                'for ((i = 0; i < n; i++)); do SLURM_PROCID=$i "$@"; done\n',
        # gcloud ... ssh --worker=i --command CMD: run CMD here in place of worker i (cd to the repo dir is dropped)
        "gcloud": 'cmd="${@: -1}"; eval "${cmd#*&& }"\n',
        "kubectl": 'cat > "$(dirname "$0")/applied.yaml"\n',
        "showpy": 'echo "process=$ELASTIC_JAX_PROCESS_ID of $ELASTIC_JAX_NUM_PROCESSES at '
                  '$ELASTIC_JAX_COORDINATOR: $*"\n',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("name", ["slurm.sbatch", "tpu_vm.sh"])
def test_cluster_scripts_run_what_the_dry_run_prints(tmp_path, name):
    """With srun / gcloud stood in for, each process starts with the environment its dry-run line names."""
    bin_dir = _fake_bin(tmp_path)
    before, env = _script_argv(name, 2)
    env = {**env, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": "showpy"}
    proc = _run(name, *before, "elastify", *ARGS, env=env)
    assert proc.returncode == 0, proc.stderr
    dry = _dry_run(name, "elastify", extra_env={"PYTHON": "showpy"})
    args = " ".join(["-m", "elastic_jax.cli", "elastify", *ARGS])
    for i, host in enumerate(dry):
        line = f"process={i} of 2 at {host['env']['ELASTIC_JAX_COORDINATOR']}: {args}"
        assert line in proc.stdout, proc.stdout


def test_gke_applies_the_rendered_manifest(tmp_path):
    bin_dir = _fake_bin(tmp_path)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "IMAGE": "reg/ej:1", "NAME": "ej-run"}
    assert _run("gke.sh", "2", "pretrain", *ARGS, env={k: v for k, v in env.items() if k != "IMAGE"}).returncode == 2
    proc = _run("gke.sh", "2", "pretrain", *ARGS, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (bin_dir / "applied.yaml").read_text() == _run("gke.sh", "--render", "2", "pretrain", *ARGS, env=env).stdout
