"""Servers for tests on ports nobody else can take from them.

A port found free and then released (`bind(0)`, close, hand the number on) can be taken by
another process before the server binds it: other tests and other people run servers on this
machine. So servers here bind port 0 themselves and the test reads the port they got from
their start-up line; and where a test needs an address that nothing answers on, it holds a
bound socket that never listens, so the port stays refused for as long as the test needs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator

from waiting import wait_until

# moto (werkzeug): " * Running on http://127.0.0.1:PORT"; mlflow server (uvicorn): "Uvicorn
# running on http://127.0.0.1:PORT (Press CTRL+C to quit)". Both print the port they bound.
_LISTENING = re.compile(r"[Rr]unning on (http://127\.0\.0\.1:(\d+))")


class ServerProcess:
    """A server started on port 0 whose output is read (and kept) as it comes."""

    def __init__(self, command: list[str], name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,  # its own process group: stopping it stops its workers too
        )
        # Drained all along: a server blocked on a full pipe would stop answering.
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def _exited(self) -> str | None:
        if self.process.poll() is None:
            return None
        return f"{self.name} exited with status {self.process.returncode}:\n" + "".join(
            self.lines[-20:]
        )

    def url(self, timeout_s: float) -> str:
        """The http://127.0.0.1:PORT the server says it listens on."""

        def announced() -> str | None:
            for line in list(self.lines):
                found = _LISTENING.search(line)
                if found:
                    return found.group(1)
            return None

        return wait_until(announced, timeout_s, f"{self.name} to bind", give_up=self._exited)

    def wait_answering(self, url: str, timeout_s: float) -> None:
        wait_until(lambda: answers(url), timeout_s, f"{self.name} on {url}", give_up=self._exited)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def answers(url: str) -> bool:
    """Whether `url` gives any HTTP answer (an error status counts: the server is up)."""
    try:
        urllib.request.urlopen(url, timeout=1).read()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


@contextlib.contextmanager
def serve(command: list[str], name: str, health: str = "", timeout_s: float = 90.0, env=None):
    """Start `command` (which must bind port 0 on 127.0.0.1 and print where), wait until
    `URL + health` answers, yield the URL; stop the server's whole process group after."""
    server = ServerProcess(command, name, env)
    try:
        url = server.url(timeout_s)
        server.wait_answering(url + health, timeout_s)
        yield url
    finally:
        server.stop()


@contextlib.contextmanager
def moto_server(timeout_s: float = 30.0) -> Iterator[str]:
    """moto's S3 (and IAM) API in server mode on 127.0.0.1. Its request recorder (off until a
    test starts it: `moto_requests`) writes to a temp folder, not to the working folder."""
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"]
    with tempfile.TemporaryDirectory(prefix="moto-") as folder:
        env = {**os.environ, "MOTO_RECORDER_FILEPATH": os.path.join(folder, "recording")}
        with serve(command, "moto_server", timeout_s=timeout_s, env=env) as url:
            yield url


@contextlib.contextmanager
def moto_requests(endpoint: str) -> Iterator[Callable[[], list[dict]]]:
    """Record the requests the moto server at `endpoint` answers from now on (moto's own
    recorder); yields a function returning those recorded so far (method, url, headers)."""

    def call(action: str) -> bytes:
        method = "GET" if action == "download-recording" else "POST"
        request = urllib.request.Request(f"{endpoint}/moto-api/recorder/{action}", method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    call("reset-recording")
    call("start-recording")
    try:
        yield lambda: [json.loads(line) for line in call("download-recording").splitlines()]
    finally:
        call("stop-recording")


def mimray_ui(timeout_s: float = 90.0):
    """`mimray ui` for the current folder's store (or MLFLOW_TRACKING_URI)."""
    command = [sys.executable, "-m", "orchestrator", "ui", "--port", "0"]
    return serve(command, "mimray ui", health="/health", timeout_s=timeout_s)


def mlflow_server(backend_store_uri: str, artifacts_destination: str, timeout_s: float = 90.0):
    """A shared `mlflow server` as a team runs one: a database plus proxied artifact storage."""
    command = [
        *(sys.executable, "-m", "mlflow", "server"),
        *("--backend-store-uri", backend_store_uri),
        *("--artifacts-destination", artifacts_destination),
        *("--host", "127.0.0.1", "--port", "0", "--workers", "1"),
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return serve(command, "mlflow server", health="/health", timeout_s=timeout_s, env=env)


@contextlib.contextmanager
def refused_address() -> Iterator[str]:
    """http://127.0.0.1:PORT where nothing answers: the port is bound here and never listened
    on, so connections are refused and no server can take it until the test is done."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}"


@contextlib.contextmanager
def cutting_proxy(url: str, cuts: int) -> Iterator[str]:
    """http://127.0.0.1:PORT relaying every connection to `url`'s server byte for byte, except
    that the first `cuts` answers are cut off after their headers (at most one byte of the
    body follows): a server worker restarted mid-answer. Their connections are then closed."""
    target = urllib.parse.urlsplit(url)
    listener = socket.create_server(("127.0.0.1", 0))
    left = [cuts]
    lock = threading.Lock()

    def pump(source: socket.socket, sink: socket.socket, cut: bool) -> None:
        seen = b""
        try:
            while data := source.recv(65536):
                if cut:
                    seen += data
                    end = seen.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    sink.sendall(seen[: end + 5])
                    break
                sink.sendall(data)
        except OSError:
            pass
        for side in (source, sink):
            with contextlib.suppress(OSError):
                side.shutdown(socket.SHUT_RDWR)

    def relay(client: socket.socket) -> None:
        with lock:
            cut, left[0] = left[0] > 0, left[0] - 1
        upstream = socket.create_connection((target.hostname, target.port))
        threading.Thread(target=pump, args=(client, upstream, False), daemon=True).start()
        pump(upstream, client, cut)
        client.close()
        upstream.close()

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                threading.Thread(target=relay, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
