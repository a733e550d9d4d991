"""Helpers of the server tests: a real `elastic-jax serve` subprocess on loopback, and the engine's answers that
the server's are compared with."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

NAME = "tiny"  # --served-model-name
# small caches and prefill pieces of at most 4 tokens: few programs to compile per budget
SMALL = ["--max-model-len", "128", "--prefill-chunk", "4", "--slots", "4", "--decode-steps", "4"]
STARTUP_LIMIT_S = 600  # only so that a server that never comes up fails the test instead of hanging it


def get(url: str):
    """GET with the standard library (the response, also for an error status)."""
    try:
        return urllib.request.urlopen(url, timeout=30)
    except urllib.error.HTTPError as err:
        return err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, checkpoint: Path, args: list[str], log: Path):
        self.port, self.log = free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "elastic_jax.cli", "serve", "--checkpoint", str(checkpoint), "--port",
               str(self.port), "--served-model-name", NAME, *SMALL, *args]
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            self._wait_ready()
        except BaseException:  # nobody would stop it otherwise
            self.proc.kill()
            self.proc.wait()
            raise

    def _wait_ready(self) -> None:
        start = time.monotonic()
        while time.monotonic() - start < STARTUP_LIMIT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            with contextlib.suppress(OSError):
                if get(f"{self.url}/health").status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the server did not come up:\n{self.log.read_text()}")

    def client(self, **kw):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=kw.pop("api_key", "none"), max_retries=0, **kw)

    def metric(self, name: str, having: str = "") -> float:
        """The sum of a metric's samples over the label sets that contain `having`, from /metrics."""
        text = get(f"{self.url}/metrics").read().decode()
        found = re.findall(rf"^{re.escape(name)}({{[^}}]*}})? (\S+)$", text, re.M)
        return sum(float(value) for labels, value in found if having in labels)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait()


def engine_text(engine, prompt_ids: list[int], budget: float, max_tokens: int) -> tuple[str, int, str]:
    """(text, token count, finish reason) of the engine's greedy answer, as the server renders it (the eos ends
    the text unseen)."""
    out = engine.generate([prompt_ids], budget, max_tokens)[0]
    eos = bool(out) and out[-1] == engine.cfg.eos_token_id
    return engine.tokenizer.decode(out[:-1] if eos else out), len(out), "stop" if eos else "length"
