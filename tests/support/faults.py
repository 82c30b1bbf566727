"""Real local faults for judge tests: a closed port, a read-only sqlite cache, an openai client that counts its
HTTP attempts (retries included)."""
from __future__ import annotations

import os
import socket
import sqlite3
import tempfile
import threading
import types

import openai

from allroads.llm.judge import store

__all__ = ["closed_port_url", "CountingClient", "read_only_sqlite", "chmod_protects"]


def closed_port_url() -> str:
    """The base URL of a loopback port nothing listens on: a socket is bound to a free port, then closed, so a
    connection to it is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/v1"


class CountingClient(openai.OpenAI):
    """An ``openai.OpenAI`` client whose ``n_attempts`` counts every HTTP request it starts (each retry too), so a
    test can count requests to an endpoint that never answers."""

    def __init__(self, base_url: str, *, max_retries: int = 0):
        self.n_attempts = 0
        self._count_lock = threading.Lock()
        http = openai.DefaultHttpxClient(event_hooks={"request": [self._count]})
        super().__init__(base_url=base_url, api_key="loopback", max_retries=max_retries, timeout=10,
                         http_client=http)

    def _count(self, request) -> None:
        with self._count_lock:
            self.n_attempts += 1


def read_only_sqlite(monkeypatch) -> None:
    """Make every sqlite database the judge's cache opens from now on read-only (``PRAGMA query_only``): reads work,
    each write fails in sqlite itself with ``attempt to write a readonly database``. For tests run as root, where
    ``chmod`` cannot make a file read-only."""
    real_connect = sqlite3.connect

    def connect(*args, **kwargs):
        db = real_connect(*args, **kwargs)
        db.execute("PRAGMA query_only = ON")
        return db

    monkeypatch.setattr(store, "sqlite3", types.SimpleNamespace(connect=connect, Error=sqlite3.Error))


def chmod_protects() -> bool:
    """Whether a read-only file mode stops this process from writing: False for root (``os.geteuid() == 0``) with
    the usual capabilities, which ignores file permissions. Probed on a real file."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "probe")
        open(path, "w").close()
        os.chmod(path, 0o400)
        try:
            open(path, "a").close()
        except PermissionError:
            return True
        return False
