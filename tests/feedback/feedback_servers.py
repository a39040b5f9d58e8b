"""Real servers for the feedback app's tests (the fixtures are in conftest.py):

- PostgreSQL: the Debian binaries (installed with apt-get when missing and this is root), a fresh
  cluster in a temporary folder on 127.0.0.1 and a free port, run as `nobody` when we are root
  (postgres refuses to run as root); one database per test.
- the app itself: `alignlab feedback serve` in a subprocess on a free loopback port.
- headless Chromium and chromedriver from Debian, for the browser test.

Each is skipped with a message saying why only when it cannot be installed.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APT_TIMEOUT = 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def apt_install(*packages: str) -> str | None:
    """Install Debian packages; None on success, else why not."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return "installing needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "install", "-y", "-q", *packages], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", *packages]):
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT)
        if proc.returncode == 0 and command[1] == "install":
            return None
    return f"apt-get install {' '.join(packages)} failed: {proc.stderr.strip()[-300:]}"


# --- PostgreSQL ---------------------------------------------------------------------------------


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class Postgres:
    def __init__(self, bindir: Path):
        self.bindir, self.port = bindir, free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="alignlab-pg-"))
        self.data, self.user = self.dir / "data", "alignlab"
        self.as_root = os.geteuid() == 0
        self.names = itertools.count()

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:  # postgres refuses to run as root
            command = ["runuser", "-u", "nobody", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.dir)

    def start(self) -> None:
        if self.as_root:
            shutil.chown(self.dir, "nobody")
        proc = self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync")
        if proc.returncode:
            raise RuntimeError(f"initdb failed: {proc.stderr[-500:]}")
        options = f"-p {self.port} -h 127.0.0.1 -k {self.dir} -c fsync=off -c max_connections=300"
        proc = self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w", "start")
        if proc.returncode:
            raise RuntimeError(f"pg_ctl start failed: {proc.stderr[-500:]} {(self.dir / 'log').read_text()[-500:]}")

    def new_database(self) -> str:
        import psycopg

        name = f"t{os.getpid()}_{next(self.names)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")  # the data is thrown away
        shutil.rmtree(self.dir, ignore_errors=True)


# --- the app in a subprocess ------------------------------------------------------------------


def find_chromium() -> tuple[str | None, str | None]:
    return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


class Server:
    """`alignlab feedback serve` on 127.0.0.1; its log (uvicorn's and the app's) goes to `log_path`."""

    def __init__(self, database_url: str, log_path: Path):
        self.database_url, self.log_path, self.port = database_url, log_path, free_port()
        self.url, self.proc = f"http://127.0.0.1:{self.port}", None

    def start(self) -> "Server":
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "alignlab.cli", "feedback", "serve", "--database-url",
                                      self.database_url, "--port", str(self.port)], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the server did not answer within 60 s")

    def kill(self) -> None:
        """Stop at once (SIGKILL): no graceful shutdown, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


# --- Chromium -----------------------------------------------------------------------------------
