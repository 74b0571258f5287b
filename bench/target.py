"""The HTTP target: a throwaway, unprivileged nginx answering like the SCX API, and its logs.

nginx (Debian's package plus ``libnginx-mod-http-echo``) runs as its own process with its own
config and ports in a temporary directory, as ``nobody`` when the harness runs as root, with
one worker process and no master. Its answers are static:

- ``POST /v1/auth``: 200 ``{"authToken", "tokenExpireAt", "expiresIn": 3600}``;
- ``POST /v1/channel/ticket``: 201, on one port per API latency. 0 ms is nginx's ``return``;
  20 ms and 100 ms are ``echo_sleep``, a timer in nginx's event loop (no CPU burnt, no thread
  blocked, nothing on the broker's path slowed).

Every accepted ticket writes one unbuffered access-log line ``$msec $status`` (the time nginx
finished the request, in ms), so the harness counts accepted tickets and their times from the
log, as nginx saw them. The ``stamped`` port (0 ms) also logs the request body: the latency
benchmark finds the publisher's timestamp in the ticket id there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from pathlib import Path

from bench.procs import Children

ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
APT_PACKAGES = ("nginx", "libnginx-mod-http-echo")
LATENCIES_MS = (0, 20, 100)
TOKEN = "bench-access-token"
# What /v1/auth answers; worker/scx/auth.py reads authToken and expiresIn
# (tokenExpireAt as fallback).
AUTH_BODY = (
    f'{{"scope":"CHANNEL","authToken":"{TOKEN}",'
    '"tokenExpireAt":"2099-12-31T23:59:59.000+00:00","expiresIn":3600}'
)


class TargetUnavailable(Exception):
    """nginx or its echo module is missing and could not be installed."""


def find_nginx() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def ensure_nginx(*, install: bool) -> str:
    """Path of the nginx binary; installs the Debian packages when missing and allowed."""
    nginx = find_nginx()
    if nginx and ECHO_MODULE.exists():
        return nginx
    hint = (
        f"the benchmark needs nginx and its echo module ({ECHO_MODULE}): "
        f"apt-get install -y {' '.join(APT_PACKAGES)}"
    )
    if not install:
        raise TargetUnavailable(hint + " (or run without --no-install)")
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise TargetUnavailable(
            hint + " (as root; this harness installs it only as root on Debian)"
        )
    print(f"installing {' '.join(APT_PACKAGES)} with apt-get ...", flush=True)
    # RUNLEVEL=1 keeps the package's own service from starting where invoke-rc.d honours it.
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", RUNLEVEL="1")
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES],
    ):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise TargetUnavailable(f"{hint}\n{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    nginx = find_nginx()
    if not nginx or not ECHO_MODULE.exists():
        raise TargetUnavailable(hint + " (installed, but still not found)")
    return nginx


def nginx_version(nginx: str) -> str:
    done = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
    return done.stderr.strip().removeprefix("nginx version: ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LogTail:
    """Counts the lines nginx appended to one access log since this object was made."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._start = self._pos = path.stat().st_size if path.exists() else 0
        self.count = 0

    def poll(self) -> int:
        try:
            with self.path.open("rb") as log:
                log.seek(self._pos)
                data = log.read()
        except FileNotFoundError:
            return self.count
        complete = data.rfind(b"\n") + 1
        self.count += data.count(b"\n", 0, complete)
        self._pos += complete
        return self.count

    def lines(self) -> list[bytes]:
        """The complete lines counted so far."""
        self.poll()
        with self.path.open("rb") as log:
            log.seek(self._start)
            data = log.read(self._pos - self._start)
        return data.splitlines()

    def times(self) -> list[float]:
        """Accept times (epoch seconds, ms resolution) of the 2xx lines."""
        out = []
        for line in self.lines():
            stamp, status, *_ = line.split(b" ", 2)
            if status.startswith(b"2"):
                out.append(float(stamp))
        return out


class NginxTarget:
    def __init__(self, nginx: str, workdir: Path, children: Children) -> None:
        self._nginx = nginx
        self._dir = workdir / "nginx"
        self._children = children
        self._proc: asyncio.subprocess.Process | None = None
        self.ports = {latency: free_port() for latency in LATENCIES_MS}
        self.stamped_port = free_port()

    def url(self, latency_ms: int) -> str:
        return f"http://127.0.0.1:{self.ports[latency_ms]}"

    @property
    def stamped_url(self) -> str:
        return f"http://127.0.0.1:{self.stamped_port}"

    def accept_log(self, latency_ms: int) -> Path:
        return self._dir / f"accept-{latency_ms}ms.log"

    @property
    def stamped_log(self) -> Path:
        return self._dir / "stamped.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _config(self) -> str:
        d = self._dir
        servers = []
        for latency, port in self.ports.items():
            if latency == 0:
                ticket = "return 201;"
            else:
                ticket = f"echo_status 201; echo_sleep {latency / 1000:.3f};"
            servers.append(_server(port, f"access_log {self.accept_log(latency)} accept; {ticket}"))
        servers.append(
            _server(
                self.stamped_port,
                f"access_log {self.stamped_log} stamped; "
                "echo_read_request_body; echo_status 201; echo -n '';",
            )
        )
        temp_paths = "\n".join(
            f"  {kind}_temp_path {d / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""
daemon off;
master_process off;
worker_processes 1;
pid {d / "nginx.pid"};
error_log {d / "error.log"} warn;
load_module {ECHO_MODULE};
events {{ worker_connections 8192; }}
http {{
  access_log off;
{temp_paths}
  client_body_buffer_size 64k;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  log_format accept '$msec $status';
  log_format stamped escape=json '$msec $status $request_body';
{"".join(servers)}
}}
"""

    async def start(self) -> None:
        self._dir.mkdir(parents=True)
        (self._dir / "nginx.conf").write_text(self._config())
        user = group = None
        if os.geteuid() == 0:  # never serve as root: hand the directory to nobody
            user, group = "nobody", "nogroup"
            self._dir.parent.chmod(0o711)  # mkdtemp's 0700 would keep nobody out
            for path in (self._dir, *self._dir.iterdir()):
                shutil.chown(path, user, group)
        self._proc = await self._children.start(
            [self._nginx, "-e", str(self._dir / "error.log"), "-p", str(self._dir),
             "-c", str(self._dir / "nginx.conf")],
            log=self._dir.parent / "nginx.out",
            user=user,
            group=group,
        )  # fmt: skip
        for port in (*self.ports.values(), self.stamped_port):
            await self._wait_listening(port)

    async def _wait_listening(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            if self._proc is not None and self._proc.returncode is not None:
                raise TargetUnavailable(f"nginx exited at start-up:\n{self._errors()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if loop.time() > deadline:
                    message = f"nginx does not listen on {port}:\n{self._errors()}"
                    raise TargetUnavailable(message) from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return

    def _errors(self) -> str:
        logs = (self._dir / "error.log", self._dir.parent / "nginx.out")
        text = "".join(log.read_text(errors="replace") for log in logs if log.exists())
        return text[-2000:] or "(no output)"

    async def stop(self) -> None:
        if self._proc is not None:
            await self._children.stop(self._proc, grace=5.0)
            self._proc = None


def _server(port: int, ticket: str) -> str:
    return f"""
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /v1/auth {{
      default_type application/json;
      return 200 '{AUTH_BODY}';
    }}
    location = /v1/channel/ticket {{ {ticket} }}
  }}
"""
