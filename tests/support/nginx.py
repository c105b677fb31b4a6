"""nginx as an mTLS WebDAV receiver, for tests and benchmarks: a receiving system not our own.

:class:`NginxWebdav` starts the Debian ``nginx`` binary in the foreground on a loopback
port, with every path (config, pid, logs, temp files, document root) in one folder, and
``ssl_verify_client on`` + ``dav_methods PUT; create_full_put_path on;`` — a stand-in for
a real receiving system that is not our own code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.support.ports import free_port, port_open

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def find_nginx() -> str | None:
    """The nginx binary, or None if it is not installed."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((c for c in NGINX_CANDIDATES if os.access(c, os.X_OK)), None)


class NginxWebdav:
    """A foreground nginx with mutual TLS and WebDAV PUT, all of its files under ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        cert: Path,
        key: Path,
        ca: Path,
        port: int | None = None,
        binary: str | None = None,
        workers: int = 1,
    ) -> None:
        found = binary or find_nginx()
        if found is None:
            raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx)")
        self.binary = found
        self.root = root
        self.port = port or free_port()
        self.www = root / "www"
        self.error_log = root / "error.log"
        self.access_log = root / "access.log"
        self.conf = root / "nginx.conf"
        self.cert, self.key, self.ca = cert, key, ca
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the document root."""
        return f"https://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        """The nginx.conf this instance runs with."""
        r = self.root
        # As root, nginx's workers would run as nobody and could not write under a private
        # temp folder: keep them as the current user in that (test-only) case.
        user = "user root;\n" if os.geteuid() == 0 else ""
        return f"""{user}worker_processes {self.workers};
daemon off;
master_process on;
pid {r}/nginx.pid;
error_log {self.error_log} warn;
events {{ worker_connections 256; }}
http {{
    access_log {self.access_log};
    client_body_temp_path {r}/client_body;
    proxy_temp_path {r}/proxy;
    fastcgi_temp_path {r}/fastcgi;
    uwsgi_temp_path {r}/uwsgi;
    scgi_temp_path {r}/scgi;
    client_max_body_size 0;
    client_body_buffer_size 1m;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {self.cert};
        ssl_certificate_key {self.key};
        ssl_client_certificate {self.ca};
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        root {self.www};
        location / {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
"""

    def start(self, *, timeout: float = 10.0) -> None:
        """Write the config, start nginx, wait until it accepts connections."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.www.mkdir(exist_ok=True)
        self.conf.write_text(self.config_text(), encoding="utf-8")
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.root), "-c", str(self.conf), "-e", str(self.error_log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", self.port):
            if self.process.poll() is not None:
                _, err = self.process.communicate()
                log = self.error_log.read_text(errors="replace") if self.error_log.exists() else ""
                raise RuntimeError(
                    f"nginx exited with {self.process.returncode}: {err.decode(errors='replace')}{log}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not listen on 127.0.0.1:{self.port} within {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop nginx (quit, then kill if it lingers)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()
