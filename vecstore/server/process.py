"""Run ``vecstore serve`` as a child process on a free loopback port (for the load
benchmark and the tests, which drive a server from outside its process)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def spawn(directory: Path, *args: str, stdout=None, env: dict | None = None,
          cwd: Path | None = None, timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Start ``vecstore serve`` over ``directory/data`` with extra ``args``, on a free
    loopback port; return the process and its ``host:port`` once it has bound the port.
    ``stdout`` (a file) takes the server's output and errors; None leaves them on ours.

    Raises RuntimeError, after killing the process, when it exits or has not bound a port
    within ``timeout`` seconds.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port_file = directory / "port"
    port_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "vecstore", "serve", "--data", str(directory / "data"),
               "--port", "0", "--port-file", str(port_file), *args]
    stderr = None if stdout is None else subprocess.STDOUT
    process = subprocess.Popen(command, cwd=cwd, stdout=stdout, stderr=stderr,
                               env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while not port_file.exists() or not port_file.read_text().strip():
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server did not start within {timeout:.0f} s")
        time.sleep(0.05)
    return process, f"127.0.0.1:{int(port_file.read_text())}"
