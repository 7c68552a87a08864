"""Start-up: the command line, and ``SimulatorProcess`` for tests and benchmarks.

The simulator runs in its own process in tests so that it never shares an
event loop (or a core, with ``cpu=``) with the gateway being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway.providers.registry import PROVIDERS as REGISTRY
from gateway.simulator.server import Simulator
from gateway.simulator.settings import PROVIDERS

READY = "simulator listening on"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options, for ``python -m gateway.simulator`` and ``gateway simulate``."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0: any free port (printed)")
    parser.add_argument(
        "--admin-port", type=int, default=None, help="admin API only (default: port + 1; 0: any free port; -1: none)"
    )
    parser.add_argument("--latency-ms", type=float, default=None, help="every provider's latency_ms")
    parser.add_argument("--response-tokens", type=int, default=None, help="every provider's response_tokens")
    parser.add_argument("--tokens-per-second", type=float, default=None, help="every provider's streaming pace")
    parser.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)  # exit when it is gone
    parser.add_argument(
        "--config",
        default=None,
        help='JSON: {"*"|"openai"|"anthropic"|"google": {setting: value}}, or flat settings for all providers',
    )


def config_from_args(args: argparse.Namespace) -> dict:
    config: dict[str, dict] = {}
    if args.config:
        loaded = json.loads(args.config)
        if not isinstance(loaded, dict):
            raise ValueError("--config must be a JSON object")
        if loaded and not set(loaded) <= {*PROVIDERS, "*"}:
            loaded = {"*": loaded}  # flat settings
        config = {k: dict(v) for k, v in loaded.items()}
    every = config.setdefault("*", {})
    for name in ("latency_ms", "response_tokens", "tokens_per_second"):
        value = getattr(args, name)
        if value is not None:
            every[name] = value
    return config


async def serve(args: argparse.Namespace) -> None:
    sim = Simulator(config_from_args(args))
    admin_port = args.admin_port
    if admin_port is None:
        admin_port = args.port + 1 if args.port else 0
    await sim.start(args.host, args.port, None if admin_port < 0 else admin_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.parent_pid:
        _exit_with_parent(loop, args.parent_pid, stop)
    gc.collect()
    gc.freeze()  # start-up objects never need scanning again: shorter GC pauses under load
    print(f"{READY} http://{args.host}:{sim.port} (admin {sim.admin_port})", flush=True)
    await stop.wait()
    await sim.close()


def _exit_with_parent(loop: asyncio.AbstractEventLoop, pid: int, stop: asyncio.Event) -> None:
    """A test run killed hard must not leave simulators behind holding ports and CPU."""
    if os.getppid() != pid:
        stop.set()
    else:
        loop.call_later(1.0, _exit_with_parent, loop, pid, stop)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM."""
    import uvloop

    try:
        uvloop.run(serve(args))
    except ValueError as exc:  # a bad --config
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken
        print(f"simulator: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.simulator", description="OpenAI/Anthropic/Gemini provider simulator")
    add_arguments(parser)
    return run(parser.parse_args(argv))


class SimulatorProcess:
    """The simulator in a child process on free ports; a context manager.

    >>> with SimulatorProcess({"*": {"latency_ms": 5}}) as sim:
    ...     sim.configure("openai", mode="error", error_status=503)
    ...     url = sim.openai_base_url  # http://127.0.0.1:PORT/v1
    """

    def __init__(
        self,
        config: dict | None = None,
        *,
        host: str = "127.0.0.1",
        cpu: int | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.initial = config or {}
        self.host = host
        self.cpu = cpu  # pin the child to this core (benchmarks)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.admin_port = 0

    # ---- addresses

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    @property
    def openai_base_url(self) -> str:
        return self.base_url_for("openai")

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url_for("anthropic")

    @property
    def google_base_url(self) -> str:
        return self.base_url_for("google")

    def base_url_for(self, provider: str) -> str:
        """The base URL a gateway deployment of ``provider`` should use: its real API's path, here."""
        return self.base_url + REGISTRY[provider].base_path

    # ---- lifecycle

    def start(self) -> SimulatorProcess:
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, "-m", "gateway.simulator", "--host", self.host, "--port", "0", "--admin-port", "0"]
        cmd += ["--config", json.dumps(self.initial), "--parent-pid", str(os.getpid())]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
        if self.cpu is not None:
            os.sched_setaffinity(self.proc.pid, {self.cpu})
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"simulator did not start within {self.startup_timeout}s")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                byte = os.read(self.proc.stdout.fileno(), 1)
                if not byte:
                    raise RuntimeError(f"simulator exited with {self.proc.wait()} before it was ready")
                line += byte
        text = line.decode().strip()
        if not text.startswith(READY):
            raise RuntimeError(f"unexpected simulator output: {text!r}")
        # "simulator listening on http://HOST:PORT (admin PORT)"
        self.port = int(text.split()[3].rsplit(":", 1)[1])
        self.admin_port = int(text.rsplit(" ", 1)[1].rstrip(")"))
        self.config()  # answers: ready

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- admin API (blocking: it is another process, a millisecond on loopback)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        conn = http.client.HTTPConnection(self.host, self.admin_port, timeout=10)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers={"content-type": "application/json"})
            resp = conn.getresponse()
            payload = json.loads(resp.read() or b"null")
        finally:
            conn.close()
        if resp.status != 200:
            raise ValueError(f"simulator admin {method} {path}: {resp.status} {payload}")
        return payload

    def configure(self, provider: str = "*", **settings: Any) -> dict:
        """Change settings of one provider or all ("*"); returns the whole config.

        ``for_seconds=`` with ``mode=`` makes the mode return to "ok" by itself.
        """
        return self._call("POST", "/_sim/config", {"provider": provider, **settings})

    def config(self) -> dict:
        return self._call("GET", "/_sim/config")

    def stats(self) -> dict:
        return self._call("GET", "/_sim/stats")

    def reset(self) -> None:
        """Back to the start-up config, counters zeroed."""
        self._call("POST", "/_sim/reset")
