"""A throwaway PostgreSQL cluster for the tests, started from the installed binaries.

:func:`start_cluster` runs ``initdb`` and ``pg_ctl`` in a temporary directory,
listening on a free loopback port (password authentication over TCP) and a unix
socket in the same directory. PostgreSQL refuses to run as root, so when the
tests run as root the cluster runs as the ``postgres`` system user (created if
missing) through ``runuser``. The cluster trades durability for speed
(``fsync=off``, small shared buffers): it only lives for one test session.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import selectors
import shutil
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Cluster", "PostgresMissing", "TurnCounter", "find_bindir", "start_cluster"]

#: The superuser the tests connect as.
USER = "agentguard"


class PostgresMissing(RuntimeError):
    """The PostgreSQL server binaries (initdb, pg_ctl) are not installed."""


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or ``None`` when there is none."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if out:
            candidates.append(out)
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(str(Path(initdb).resolve().parent))
    for candidate in candidates:
        path = Path(candidate)
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> str | None:
    """The user to run the server as: ``None`` (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
            check=True,
            capture_output=True,
        )
    return "postgres"


@dataclass
class Cluster:
    """A running throwaway cluster."""

    bindir: Path
    root: Path
    port: int
    password: str
    run_as: str | None

    @property
    def data(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        """A ``postgresql://`` URL for ``database`` over TCP with the superuser's password."""
        secret = self.password if password is None else password
        return f"postgresql://{USER}:{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)

    def start(self) -> None:
        """Start (or restart) the server and wait until it accepts connections."""
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
            "-c full_page_writes=off -c shared_buffers=16MB "
            "-c max_connections=100"
        )
        done = self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-w",
            "-o",
            options,
            "start",
        )
        if done.returncode != 0:
            log = (
                (self.root / "log").read_text(errors="replace")
                if (self.root / "log").exists()
                else ""
            )
            raise RuntimeError(f"pg_ctl start failed: {done.stdout}{done.stderr}\n{log}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect clients, keep the data; ``immediate``: crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")


def start_cluster() -> Cluster:
    """Create and start a throwaway cluster.

    Raises:
        PostgresMissing: the server binaries are not installed.
        RuntimeError: initdb or pg_ctl failed (their output is in the message).
    """
    bindir = find_bindir()
    if bindir is None:
        raise PostgresMissing(
            "PostgreSQL server binaries (initdb, pg_ctl) not found via pg_config, "
            "/usr/lib/postgresql/*/bin or PATH; install Debian's postgresql package"
        )
    run_as = _server_user()
    root = Path(tempfile.mkdtemp(prefix="agentguard-pg-"))
    password = secrets.token_urlsafe(18)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    if run_as is not None:
        record = pwd.getpwnam(run_as)
        os.chown(root, record.pw_uid, record.pw_gid)
        os.chown(pwfile, record.pw_uid, record.pw_gid)
    cluster = Cluster(bindir, root, _free_port(), password, run_as)
    done = cluster._run(
        "initdb",
        "-D",
        str(cluster.data),
        "-U",
        USER,
        "--pwfile",
        str(pwfile),
        "--auth-host=scram-sha-256",
        "--auth-local=trust",
        "-E",
        "UTF8",
        "--no-sync",
        "--no-instructions",
    )
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
    try:
        cluster.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


def remove_cluster(cluster: Cluster) -> None:
    """Stop the cluster and delete its directory."""
    cluster.stop("immediate")
    shutil.rmtree(cluster.root, ignore_errors=True)


class TurnCounter:
    """A TCP relay in front of the database server that counts round trips.

    A round trip is a turn of the conversation: bytes from the client after
    the server has answered (or the first bytes of a connection). Statements
    sent in one pipeline count once; a statement that must wait for the
    previous answer counts again.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        netloc = parts.netloc.rsplit("@", 1)
        where = f"127.0.0.1:{port}"
        self.url = urlunsplit(
            parts._replace(netloc=f"{netloc[0]}@{where}" if len(netloc) > 1 else where)
        )
        self.turns = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, server)
        selector.register(server, selectors.EVENT_READ, client)
        answered = True  # the first bytes from the client start a turn
        try:
            while True:
                for key, _ in selector.select():
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is client:
                        if answered:
                            with self._lock:
                                self.turns += 1
                        answered = False
                    else:
                        answered = True
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()

    def close(self) -> None:
        self._listener.close()
