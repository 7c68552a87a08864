"""The Docker image and compose stack, tested as far as a machine without a Docker daemon allows.

Not run here: ``docker build`` and ``docker compose up`` themselves (the README says so). Run:
the compose file parses and wires what it says (every mounted file exists, the scrape target and
the Grafana data source name real services, the spec's resource limits), and the image's own
commands (the model-baking step, the entrypoint, the health check) run on this machine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from tests.harness import clean_env
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def _dockerfile() -> dict[str, list[str]]:
    """Instructions of the final stage: name -> list of argument strings (continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages: list[dict[str, list[str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        if op.upper() == "FROM":
            stages.append({})
        stages[-1].setdefault(op.upper(), []).append(rest.strip())
    return stages[-1]


def test_compose_has_the_stack_and_the_spec_limits():
    assert set(SERVICES) == {"backend", "simulator", "redis", "prometheus", "grafana", "influxdb"}
    assert SERVICES["backend"]["deploy"]["resources"] == {
        "limits": {"cpus": "4.0", "memory": "8192M"},
        "reservations": {"cpus": "2.0", "memory": "4096M"},
    }
    for name, svc in SERVICES.items():
        for port in svc.get("ports", ()):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_every_mounted_file_exists_and_the_wiring_names_real_services():
    mounts = []
    for svc in SERVICES.values():
        for volume in svc.get("volumes", ()):
            source, target = volume.split(":")[:2]
            assert source.startswith("./"), volume
            assert (ROOT / source).exists(), f"{source} is mounted but missing"
            mounts.append((ROOT / source, target))
    assert mounts
    prom = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    target = prom["scrape_configs"][0]["static_configs"][0]["targets"][0]
    host, port = target.split(":")
    assert host in SERVICES and SERVICES[host]["environment"]["API_URL"].endswith(f":{port}")
    rules_dir = next(t for s, t in mounts if s.name == "rules")
    assert prom["rule_files"] == [rules_dir + "/*.yml"]
    datasource = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    board_dir = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/gateway.yml").read_text())["providers"][0]["options"]["path"]
    assert (ROOT / "grafana" / "dashboards", board_dir) in mounts
    uid = json.loads((ROOT / "grafana/dashboards/ai-gateway-performance.json").read_text())["panels"][0]["datasource"]["uid"]
    assert uid == datasource["uid"]


def test_dockerfile_is_slim_non_root_with_a_healthcheck():
    df = _dockerfile()
    assert all("slim" in f for f in df["FROM"])
    assert df["USER"] == ["gateway"]
    assert df["HEALTHCHECK"] and "/health" in df["HEALTHCHECK"][0]
    assert json.loads(df["ENTRYPOINT"][0]) == ["gateway"] and json.loads(df["CMD"][0]) == ["serve"]


def test_the_images_commands_run_here():
    """The model-baking RUN step, then ENTRYPOINT + CMD with the image's ENV, then its HEALTHCHECK."""
    df = _dockerfile()
    bake = next(r for r in df["RUN"] if "warm()" in r)
    argv = shlex.split(bake)
    assert argv[0] == "python"
    subprocess.run([sys.executable, *argv[1:]], check=True, timeout=120)

    env = dict(pair.split("=", 1) for pair in shlex.split(" ".join(df["ENV"])))
    port = free_port()
    metrics_dir = tempfile.mkdtemp(prefix="image-metrics-")
    # The image's settings, on loopback and a free port, two workers (the image says 4) to stay quick.
    env |= {"API_URL": f"http://127.0.0.1:{port}", "WORKER_PROCESSES": "2", "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
            "LOG_LEVEL": "WARNING", "GATEWAY_CACHE": "off"}
    entry = json.loads(df["ENTRYPOINT"][0]) + json.loads(df["CMD"][0])
    gateway_bin = str(Path(sys.executable).with_name(entry[0]))
    proc = subprocess.Popen([gateway_bin, *entry[1:]], env=clean_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        check = json.loads(df["HEALTHCHECK"][0].split("CMD", 1)[1])
        check = [sys.executable if check[0] == "python" else check[0]] + [a.replace(":8000", f":{port}") for a in check[1:]]
        deadline = time.monotonic() + 40
        while subprocess.run(check, capture_output=True, timeout=10).returncode != 0:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the image's health check never passed"
            time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert b"http_requests_total" in r.read()
        assert any(name.endswith(".db") for name in os.listdir(metrics_dir))  # the workers write where the image says
    finally:
        proc.terminate()
        # Granian drains for up to REQUEST_TIMEOUT_SECONDS + 5; stopping took 8-35 s on a loaded host (base commit too).
        proc.wait(45)
    assert not any(name.startswith("gauge_live") for name in os.listdir(metrics_dir))  # workers marked dead at exit
