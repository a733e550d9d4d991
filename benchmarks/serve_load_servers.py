"""The servers the load benchmark talks to, each a subprocess on loopback: `elastic-jax serve`, and llama.cpp's own
OpenAI server (`python -m llama_cpp.server`, llama-cpp-python) on the GGUF export of one budget. Also what the
benchmark reads from them (the budget @auto serves now, the policy's logged changes) and the CPU that processes
other than the benchmark and its server use while it times.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from elastic_jax.inference.idle import LoadWindow

STARTUP_LIMIT_S = 900  # a server that is not up by then is reported as failed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server subprocess that is up (its health URL answers 200) or stopped; its output goes to `log`."""

    def __init__(self, cmd: list[str], health_path: str, log: Path):
        self.port, self.log = free_port(), log
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.root}/v1"
        self.proc = subprocess.Popen([*cmd, "--port", str(self.port)], stdout=log.open("w"), stderr=subprocess.STDOUT)
        try:
            self._wait_up(self.root + health_path)
        except BaseException:  # one that does not come up is stopped, not left behind
            self.stop()
            raise
        print(f"up: {self.url} ({Path(cmd[2]).name if cmd[1] == '-m' else cmd[0]})", flush=True)

    def _wait_up(self, url: str) -> None:
        start = time.monotonic()
        while time.monotonic() - start < STARTUP_LIMIT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{url}: the server exited with {self.proc.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(url, timeout=5).status == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"{url}: the server did not come up in {STARTUP_LIMIT_S}s")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.root + path, timeout=60) as response:
            return response.read().decode()

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=60)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_ours(checkpoint: str, slots: int, context: int, slo_ttft_ms: float | None, slo_tpot_ms: float | None,
               extra: list[str], log: Path) -> ServerProcess:
    cmd = [sys.executable, "-m", "elastic_jax.cli", "serve", "--checkpoint", checkpoint, "--served-model-name", "m",
           "--slots", str(slots), "--max-model-len", str(context), *extra]
    if slo_ttft_ms:
        cmd += ["--slo-ttft-ms", str(slo_ttft_ms)]
    if slo_tpot_ms:
        cmd += ["--slo-tpot-ms", str(slo_tpot_ms)]
    return ServerProcess(cmd, "/health", log)


def export_gguf(checkpoint: str, budget: float, out: Path) -> Path:
    """The budget's nested model as an f32 GGUF (llama.cpp refuses a pattern mixing dense `-` and MoE `E`)."""
    subprocess.run([sys.executable, "-m", "elastic_jax.cli", "export-gguf", "--checkpoint", checkpoint,
                    "--budget", str(budget), "--dtype", "f32", "--out", str(out)], check=True)
    return out


def start_llamacpp(gguf: Path, context: int, threads: int, log: Path) -> ServerProcess:
    """llama-cpp-python's server answers one request at a time; --interrupt_requests False makes a new request
    wait for the running one instead of cutting it off (its default), so every request is answered."""
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "m",
           "--n_ctx", str(context), "--n_threads", str(threads), "--n_threads_batch", str(threads),
           "--interrupt_requests", "False"]
    return ServerProcess(cmd, "/v1/models", log)


def listed_models(server: ServerProcess) -> list[str]:
    """The fixed models a server lists (ours: every trained budget; not @auto, which picks among them)."""
    import json

    return [m["id"] for m in json.loads(server.get("/v1/models"))["data"] if not m["id"].endswith("@auto")]


def auto_budget(server: ServerProcess) -> float:
    """The budget our @auto serves now (the `elastic_jax:auto_budget` gauge)."""
    return float(re.search(r"^elastic_jax:auto_budget (\S+)$", server.get("/metrics"), re.M).group(1))


def wait_for_budget(server: ServerProcess, budget: float, limit_s: float) -> float:
    """Seconds until @auto serves `budget` again (the policy steps back up once the load has fallen); raises when
    it does not within `limit_s`."""
    start = time.monotonic()
    while auto_budget(server) != budget:
        if time.monotonic() - start > limit_s:
            raise RuntimeError(f"@auto did not return to {budget} within {limit_s:g}s of an idle server "
                               f"(it serves {auto_budget(server)})")
        time.sleep(0.25)
    return time.monotonic() - start


def auto_changes(log: Path) -> list[str]:
    """Every change of @auto's budget the server logged ('auto budget 1 -> 0.7: <why>'), in order."""
    return re.findall(r"auto budget (.*)$", log.read_text(), re.M)


# ---- CPU used by other processes while a phase runs ----------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """CPU seconds a process has used (utime + stime; 0 once it is gone)."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after the command's name
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


class OthersWindow:
    """Cores that processes other than this one and `pids` (its servers) kept busy between enter and exit."""

    def __init__(self, pids: list[int]):
        self.pids, self.cores = pids, None

    def __enter__(self) -> OthersWindow:
        self.window = LoadWindow().start()  # the machine's busy time less this process's
        self.servers, self.wall = sum(map(cpu_seconds, self.pids)), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        servers = (sum(map(cpu_seconds, self.pids)) - self.servers) / max(time.perf_counter() - self.wall, 1e-9)
        self.cores = max(0.0, self.window.stop() - servers)
