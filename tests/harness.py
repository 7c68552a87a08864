"""Run the real gateway (``python -m gateway serve``) in a subprocess for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from typing import Iterator

from tests.redis_server import free_port

# Variables that would leak the developer's or CI's own setup into a test gateway.
_SCRUB = (
    "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL",
    "GOOGLE_BASE_URL", "REDIS_URL", "GATEWAY_CONFIG", "GATEWAY_API_KEYS", "GATEWAY_ADMIN_KEYS", "API_URL",
    "WORKER_PROCESSES", "GATEWAY_SIMULATED", "DATABASE_URL",
)

API_KEY = "test-key-123"
ADMIN_KEY = "admin-key-456"


def simulator_env(sim_base: str) -> dict[str, str]:
    """Point all three providers at one simulator (``http://127.0.0.1:PORT``)."""
    return {
        "OPENAI_API_KEY": "sk-sim",
        "ANTHROPIC_API_KEY": "sk-ant-sim",
        "GOOGLE_API_KEY": "g-sim",
        "OPENAI_BASE_URL": sim_base + "/v1",
        "ANTHROPIC_BASE_URL": sim_base,
        "GOOGLE_BASE_URL": sim_base,
    }


def clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(overrides)
    return env


def wait_ok(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    """Poll ``url`` until it answers 200 (True), or ``proc`` exits or the time is up (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
    return False


class GatewayProcess:
    def __init__(self, env: dict[str, str], workers: int = 1) -> None:
        self.port = int(env["API_URL"].rsplit(":", 1)[1]) if "API_URL" in env else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        defaults = {
            "API_URL": env.get("API_URL", self.url),
            "WORKER_PROCESSES": str(workers),
            "GATEWAY_API_KEYS": API_KEY,
            "GATEWAY_ADMIN_KEYS": ADMIN_KEY,
            "LOG_LEVEL": "WARNING",
            # Never the default (a SQLite file in the working directory: the repository): a file of its own.
            "DATABASE_URL": "sqlite:///" + os.path.join(tempfile.mkdtemp(prefix="gateway-db-"), "gateway.db"),
            # Most tests send far more than the spec's 60 a minute on one key; limit tests turn them on.
            "RATE_LIMIT_ENABLED": "false",
        }
        self.env = clean_env(**(defaults | env))
        self.logfile = tempfile.NamedTemporaryFile(prefix="gateway-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"],
            env=self.env, stdout=self.logfile, stderr=subprocess.STDOUT,
        )
        if wait_ok(self.url + "/health", self.proc, timeout):
            return
        if self.proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
        raise RuntimeError(f"gateway did not become healthy:\n{self.log()}")

    def log(self) -> str:
        with open(self.logfile.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code


@contextmanager
def running_gateway(env: dict[str, str], workers: int = 1) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(env, workers)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()
        os.unlink(gw.logfile.name)


@contextmanager
def gateway_with_config(toml: str, env: dict[str, str] | None = None, workers: int = 1) -> Iterator[GatewayProcess]:
    """A gateway whose GATEWAY_CONFIG is ``toml`` (written to a temporary file for its lifetime)."""
    fd, path = tempfile.mkstemp(prefix="gateway-", suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(toml)
    try:
        with running_gateway({**(env or {}), "GATEWAY_CONFIG": path}, workers) as gw:
            yield gw
    finally:
        os.unlink(path)


def openai_client(gw: GatewayProcess):
    """The official openai SDK pointed at a test gateway, without the SDK's own retries."""
    import openai

    return openai.OpenAI(base_url=gw.url + "/v1", api_key=API_KEY, max_retries=0)
