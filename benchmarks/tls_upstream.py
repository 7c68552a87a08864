"""A TLS + HTTP/2 upstream on loopback: nginx, with the test CA's certificate, in front of the simulator.

Real providers speak TLS and HTTP/2; the simulator speaks plain HTTP/1.1. nginx terminates TLS
(ALPN h2 or http/1.1) on 127.0.0.1 and proxies to the simulator over pooled HTTP/1.1 keep-alive,
without buffering, so streams pass as they are produced. The certificate is the one the tests use
(``tests/data/tls``: a test-only CA and a 127.0.0.1 certificate it signed); clients trust it
through ``ca_file`` (the gateway: ``UPSTREAM_CA_BUNDLE``).

Needs nginx (``apt-get install -y nginx``); its worker is pinned to ``cpu`` like the simulator.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

TLS = Path(__file__).resolve().parents[1] / "tests" / "data" / "tls"

_CONF = """\
worker_processes 1;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream simulator {{ server 127.0.0.1:{upstream_port}; keepalive 512; }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {tls}/server.pem;
        ssl_certificate_key {tls}/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:tls:10m;
        keepalive_requests 10000000;
        http2_max_requests 10000000;
        location / {{
            proxy_pass http://simulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NginxTLS:
    ca_file = str(TLS / "ca.pem")

    def __init__(self, upstream_port: int, cpu: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.cpu = cpu
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="gateway-bench-nginx-")
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> NginxTLS:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        conf = Path(self.dir) / "nginx.conf"
        conf.write_text(_CONF.format(dir=self.dir, upstream_port=self.upstream_port, port=self.port, tls=TLS))
        cmd = [nginx, "-p", self.dir, "-c", str(conf), "-g", "daemon off;"]
        if self.cpu is not None:
            cmd = ["taskset", "-c", str(self.cpu), *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.proc.stderr.read().decode()[:2000]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not listen in time")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful: its worker exits too
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> NginxTLS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
