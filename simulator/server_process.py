"""Start `ota serve` as a child process and learn where it listens from its ready file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from simulator.errors import ServerError


def terminate(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM (a graceful stop: flush and save), then SIGKILL if it has not exited in ``timeout_s``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class ServerEndpoints:
    api_url: str
    mqtt_url: str
    repo_url: str


class ServerProcess:
    """``with ServerProcess(data_dir) as endpoints:`` runs a server for the block's duration."""

    def __init__(
        self,
        data_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 90.0,
        own_session: bool = False,
    ) -> None:
        """``own_session``: the server in a session of its own, on its own CPU share (``ota-bench``,
        :mod:`simulator.cpu_share`); it then gets no signal sent to its starter's process group."""
        self.data_dir = data_dir
        self.own_session = own_session
        self.env = dict(os.environ if env is None else env)
        self.startup_timeout = startup_timeout
        self.log_path = data_dir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerEndpoints:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ready = self.data_dir / "ready.json"
        ready.unlink(missing_ok=True)
        command = [sys.executable, "-m", "ota_server", "serve", "--port", "0", "--data-dir", str(self.data_dir)]
        command += ["--ready-file", str(ready)]
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=self.own_session
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(f"server exited with {self._proc.returncode} during start-up:\n{self.log_tail()}")
            if ready.exists():
                try:
                    info = json.loads(ready.read_text())
                except ValueError:
                    info = None  # being written; read again
                if info:
                    return ServerEndpoints(info["api_url"], info["mqtt_url"], info["repo_url"])
            time.sleep(0.1)
        self.stop()
        raise ServerError(f"server not ready after {self.startup_timeout:.0f}s:\n{self.log_tail()}")

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (for CPU and memory figures)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def admin_token(self) -> str:
        """The bootstrap admin token the server wrote to ``<data_dir>/admin-token`` on its first start."""
        path = self.data_dir / "admin-token"
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ServerError(
                f"no admin token at {path}: it is written on the server's first start; "
                f"make one with `ota db bootstrap-token --data-dir {self.data_dir}` or use a fresh --data-dir"
            ) from exc

    def warnings(self) -> list[str]:
        """WARNING and ERROR lines the server logged so far (e.g. freshly generated dev keys)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [line for line in lines if " WARNING " in line or " ERROR " in line]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc)

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.stop()
