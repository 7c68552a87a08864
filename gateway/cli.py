"""``gateway serve | simulate | check-config`` (and the database's commands, gateway/db/commands.py).

Settings are validated here, in the parent process, before any worker starts:
a bad value prints one line naming it and exits with status 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from gateway.config import ConfigError, Settings, load_settings
from gateway.providers.registry import PROVIDERS

log = logging.getLogger("gateway")

SIMULATOR_KEY = "sim-key"


def _fail(message: str) -> None:
    print(f"gateway: config error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the embedded simulator exited at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the embedded simulator did not start listening")


def start_embedded_simulator() -> tuple[subprocess.Popen, dict[str, str]]:
    """Start the simulator in its own process and point every provider at it."""
    port, admin = _free_port(), _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.simulator", "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin)],
        stdout=subprocess.DEVNULL,
    )
    _wait_listening(port, proc)
    base = f"http://127.0.0.1:{port}"
    env = {"GATEWAY_SIMULATED": "true"}
    for p in PROVIDERS.values():
        env[p.api_key_env] = SIMULATOR_KEY
        env[p.base_url_env] = base + p.base_path  # the simulator serves each API at its real path
    env["GATEWAY_SIMULATOR_ADMIN_URL"] = f"http://127.0.0.1:{admin}"
    return proc, env


def lockless_signals(server) -> None:
    """Granian's main-process signal handlers set a ``threading.Event``, which takes the Event's lock. A
    signal that lands while the main thread holds that lock (leaving ``Event.wait`` after an earlier
    signal: SIGTERM sent twice, Ctrl-C pressed twice) waits on itself forever, and the workers, their
    in-flight requests and their unwritten ledger rows with it, until something kills the process (seen
    in 8 of 54 benchmark shutdowns by two back-to-back SIGTERMs, granian 2.8.9). These handlers set the Event from
    a short-lived thread, which takes the lock once the main thread lets it go."""
    event = server.main_loop_interrupt

    def interrupt(*_) -> None:
        server.interrupt_signal = True
        threading.Thread(target=event.set, name="granian-signal", daemon=True).start()

    def reload(*_) -> None:
        server.reload_signal = True
        threading.Thread(target=event.set, name="granian-signal", daemon=True).start()

    server.signal_handler_interrupt = interrupt  # read by Granian's serve() when it installs its handlers
    server.signal_handler_reload = reload


def bind_address(host: str) -> str:
    """Granian binds IP addresses only: resolve a name such as API_URL's default 'localhost'."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        _fail(f"API_URL: cannot resolve host {host!r}: {exc.strerror}")
    # Prefer IPv4: 'localhost' should answer on 127.0.0.1, where clients and probes look first.
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return infos[0][4][0]


def _needs_simulator(settings: Settings) -> bool:
    return not settings.configured_providers and not settings.models


def _override(settings: Settings, args: argparse.Namespace) -> None:
    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port


def prepare_metrics_dir() -> tuple[str, bool]:
    """PROMETHEUS_MULTIPROC_DIR for the workers, emptied (or made) before any starts: left-over files
    would be summed into the new counts. Returns (path, made here: remove it on exit)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="gateway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        return path, True
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.unlink(os.path.join(path, name))
    return path, False


VERIFIER_SOCKET_ENV = "GATEWAY_VERIFIER_SOCKET"  # gateway.cache.verifier_client.SOCKET_ENV


def _start_shared_verifier(settings: Settings, workers: int, socket_dir: str):
    """The cache's MiniLM verifier in one process for every worker (loaded once, not once a worker);
    the workers find it through the environment they inherit. None when the cache does not use it."""
    from gateway.cache.verifier_client import Supervisor

    cc = settings.cache_config
    minilm = cc is not None and cc.enabled and cc.semantic and cc.embedder == "minilm"
    if minilm:
        from gateway.cache.embed import preload

        preload()  # the static vectors' table and the vocabulary, inherited by the workers
    if not (minilm and cc.shared_verifier):
        os.environ.pop(VERIFIER_SOCKET_ENV, None)
        shutil.rmtree(socket_dir, ignore_errors=True)
        if minilm:
            # Each worker runs MiniLM, and they fork from here: onnxruntime before usearch (gateway/cache/__init__.py).
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                pass
        return None
    sup = Supervisor(socket_dir, threads=max(1, min(workers, os.cpu_count() or 1)), window=cc.verify_window_tokens)
    sup.start()
    log.info("cache verifier: one shared process (pid %d) for %d worker(s)", sup.proc.pid, workers)
    return sup


def _preload_app() -> None:
    """Import the app here, once: Granian forks its workers from this process, so they start with these
    modules' pages shared (copy-on-write) instead of importing them each; frozen, so that no collection
    in a worker writes to them. Each worker still builds its own app (create_app)."""
    import gc

    import gateway.http.asgi  # noqa: F401

    gc.collect()
    gc.freeze()


def serve(args: argparse.Namespace) -> None:
    # Set before the settings import gateway.cache: this process never runs MiniLM, so it does not load
    # onnxruntime, and neither do the workers it forks, unless the settings ask for a model in each worker.
    socket_dir = tempfile.mkdtemp(prefix="gateway-verifier-")
    os.environ[VERIFIER_SOCKET_ENV] = os.path.join(socket_dir, "verifier.sock")
    try:
        _serve(args, socket_dir)
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)


def _serve(args: argparse.Namespace, socket_dir: str) -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail(str(exc))
    _override(settings, args)
    workers = args.workers or settings.worker_processes
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from gateway.db.commands import prepare

    prepare(settings)  # the schema checked (SQLite: migrated) once, before the simulator or any worker starts

    sim = None
    if _needs_simulator(settings):
        sim, sim_env = start_embedded_simulator()
        os.environ.update(sim_env)
        log.warning(
            "no provider API key found (%s): serving against the embedded provider simulator at %s; "
            "simulator admin %s",
            ", ".join(p.api_key_env for p in PROVIDERS.values()),
            sim_env["ANTHROPIC_BASE_URL"],
            sim_env["GATEWAY_SIMULATOR_ADMIN_URL"],
        )
        settings = load_settings()
        _override(settings, args)  # the reload must not undo --host / --port
    else:
        log.info("providers configured: %s", ", ".join(settings.configured_providers) or "(model groups only)")

    verifier = _start_shared_verifier(settings, workers, socket_dir)

    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings

    # Set before a worker imports prometheus_client (this process never does): it picks its value store at import.
    metrics_dir, own_dir = prepare_metrics_dir() if settings.metrics else (None, False)
    keys = list(settings.api_keys)
    log.info(
        "gateway listening on http://%s:%d (%d worker%s, %d API key%s)",
        settings.host, settings.port, workers, "s" if workers > 1 else "", len(keys), "s" if len(keys) > 1 else "",
    )
    _preload_app()
    server = Granian(
        "gateway.http.asgi:create_app",
        factory=True,
        address=bind_address(settings.host),
        port=settings.port,
        interface=Interfaces.ASGI,
        loop=Loops.uvloop,
        workers=workers,
        backlog=max(128, settings.worker_connections),
        # A WebSocket holds one of Granian's slots for its whole life; /ws caps connections at
        # WORKER_CONNECTIONS itself (refusing beyond with 1013), so leave HTTP requests room beside them.
        backpressure=settings.worker_connections * 2,
        http1_settings=HTTP1Settings(keep_alive=True),
        log_level=settings.log_level.lower() if settings.log_level != "CRITICAL" else "critical",
        log_access=settings.log_level == "DEBUG",
        # In-flight requests get the request deadline to finish on shutdown.
        workers_kill_timeout=int(settings.request_timeout_seconds) + 5,
    )
    lockless_signals(server)
    try:
        server.serve()
    finally:
        if verifier is not None:
            verifier.stop()
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if sim is not None:
            sim.send_signal(signal.SIGTERM)
            try:
                sim.wait(5)
            except subprocess.TimeoutExpired:
                sim.kill()


def check_config(args: argparse.Namespace) -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail(str(exc))
    providers = settings.configured_providers or ["(none: the embedded simulator would be used)"]
    print(f"ok: providers {', '.join(providers)}; {len(settings.models)} model groups; {len(settings.api_keys)} keys")


def doctor(args: argparse.Namespace) -> None:
    from gateway import doctor as checks

    url, key = args.url, args.key
    if url is None or key is None:
        try:
            settings = load_settings()
        except ConfigError as exc:
            _fail(str(exc))
        url = url or f"http://{bind_address(settings.host)}:{settings.port}"
        key = key or next((k.key for k in settings.api_keys.values() if k.admin), None)
    raise SystemExit(checks.run(url, key, args.interval))


def simulate(args: argparse.Namespace) -> None:
    from gateway import simulator

    simulator.run(args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gateway", description="OpenAI-compatible AI gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway under Granian")
    p.add_argument("--host", help="overrides API_URL's host")
    p.add_argument("--port", type=int, help="overrides API_URL's port")
    p.add_argument("--workers", type=int, help="overrides WORKER_PROCESSES")
    p.set_defaults(func=serve)

    p = sub.add_parser("simulate", help="run the provider simulator (OpenAI, Anthropic and Gemini wire formats)")
    from gateway import simulator

    simulator.add_arguments(p)
    p.set_defaults(func=simulate)

    p = sub.add_parser("check-config", help="validate the settings and exit")
    p.set_defaults(func=check_config)

    # gateway.doctor is imported only when it runs: it loads prometheus_client, which must not be
    # imported in this process before `serve` sets PROMETHEUS_MULTIPROC_DIR (the workers fork from it).
    p = sub.add_parser("doctor", help="walk the troubleshooting guide against a running gateway")
    p.add_argument("--url", default=None, help="the gateway (default: API_URL)")
    p.add_argument("--key", default=None, help="an admin key, for the cache checks (default: the first admin key)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between the two scrapes (rates, memory trend)")
    p.set_defaults(func=doctor)
    from gateway.db import commands as db_commands

    db_commands.add_parsers(sub)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
