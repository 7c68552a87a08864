"""``gateway serve``: the embedded default, several workers, graceful shutdown."""

from __future__ import annotations

import asyncio
import urllib.request

import aiohttp
import orjson
import pytest

from gateway.cli import bind_address
from tests.harness import API_KEY, GatewayProcess, running_gateway
from tests.redis_server import free_port

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_embedded_default_starts_the_simulator_and_says_so_first():
    # No provider key, no Redis: the gateway brings its own simulator.
    with running_gateway({"LOG_LEVEL": "INFO"}) as gw:
        first_line = gw.log().splitlines()[0]
        assert "embedded provider simulator" in first_line
        req = urllib.request.Request(
            gw.url + "/v1/chat/completions",
            data=orjson.dumps({"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "hello there"}]}),
            headers=AUTH | {"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            body = orjson.loads(r.read())
        assert "hello there" in body["choices"][0]["message"]["content"]
        with urllib.request.urlopen(gw.url + "/ready", timeout=5) as r:
            assert orjson.loads(r.read())["simulated"] is True


async def test_graceful_shutdown_finishes_in_flight_requests():
    gw = GatewayProcess({"LOG_LEVEL": "INFO"}, workers=2)
    gw.start()
    try:
        admin = next(line for line in gw.log().splitlines() if "embedded provider simulator" in line)
        assert admin
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "slow one"}]}
        async with aiohttp.ClientSession() as http:
            # The embedded simulator answers at once; slow it down through its admin API.
            sim_admin = gw_env_admin(gw)
            async with http.post(sim_admin + "/_sim/config", json={"provider": "*", "latency_ms": 1500}) as r:
                assert r.status == 200
            tasks = [asyncio.create_task(http.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH)) for _ in range(8)]
            await asyncio.sleep(0.5)
            gw.proc.terminate()  # SIGTERM while 8 requests are in flight
            responses = await asyncio.gather(*tasks)
            assert [r.status for r in responses] == [200] * 8
        # Granian drains for up to REQUEST_TIMEOUT_SECONDS + 5: stopping took 8-35 s on a loaded host (base commit too).
        assert gw.proc.wait(45) == 0
    finally:
        gw.stop()


def gw_env_admin(gw: GatewayProcess) -> str:
    # The serve process logs the simulator's address; its admin port is exported to workers.
    for line in gw.log().splitlines():
        if "simulator admin" in line:
            return line.rsplit(" ", 1)[-1]
    raise AssertionError("no simulator admin address in the log:\n" + gw.log())


def test_api_url_with_a_host_name_binds():
    # API_URL's default host is 'localhost': Granian binds IP addresses only, so serve resolves it.
    port = free_port()
    with running_gateway({"API_URL": f"http://localhost:{port}"}) as gw:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            assert r.status == 200
        assert gw.proc.poll() is None


def test_port_option_holds_with_the_embedded_simulator(tmp_path):
    # The embedded default reloads its settings once the simulator is up: --port must survive that.
    import os
    import subprocess
    import sys
    import time

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "API_URL"}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_bind_address_resolves_names():
    assert bind_address("127.0.0.1") == "127.0.0.1"
    assert bind_address("0.0.0.0") == "0.0.0.0"
    assert bind_address("localhost") == "127.0.0.1"


def test_serve_process_does_not_import_prometheus_client_before_the_workers_fork():
    # prometheus_client picks its value store (per process, or mmap files for multiprocess mode) at
    # import; imported in the parent before PROMETHEUS_MULTIPROC_DIR is set, forked workers never
    # write their metrics where a scrape looks.
    import subprocess
    import sys

    code = "import sys, gateway.cli; gateway.cli.main(['check-config']); print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"



_SIGNAL_IN_THE_WINDOW = """
import os, signal, sys, threading
from granian import Granian
from gateway.cli import lockless_signals

server = Granian("gateway.http.asgi:create_app", factory=True)
if sys.argv[1] == "fixed":
    lockless_signals(server)
event = server.main_loop_interrupt
watchdog = threading.Timer(5, lambda: (print("deadlocked", flush=True), os._exit(3)))
watchdog.daemon = True
watchdog.start()
with event._cond:  # held, as by the main thread leaving Event.wait after an earlier signal
    server.signal_handler_interrupt(signal.SIGTERM, None)  # a handler that runs right then
assert event.wait(5) and server.interrupt_signal
print("interrupted")
"""


@pytest.mark.parametrize("variant", ["fixed", "granian"])
def test_a_signal_landing_while_the_main_loop_holds_its_lock_does_not_hang(variant):
    """A second SIGTERM during shutdown (a supervisor that repeats it, Ctrl-C twice) must not hang `gateway serve`.

    Granian's own handler sets a threading.Event, taking the Event's lock: when the signal lands while the
    main thread holds that lock, the process waits on itself forever (seen in benchmark shutdowns by two
    back-to-back SIGTERMs). The "granian" case shows the hang this guards against is real."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _SIGNAL_IN_THE_WINDOW, variant], capture_output=True, text=True, timeout=60)
    if variant == "fixed":
        assert r.returncode == 0 and "interrupted" in r.stdout, r.stdout + r.stderr
    else:  # when Granian's handler stops deadlocking, lockless_signals can go
        assert r.returncode == 3 and "deadlocked" in r.stdout, r.stdout + r.stderr
