"""Process and port helpers shared by the Kafka and PostgreSQL launchers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from streams.infra.errors import InfraError


def write_private(path: Path, data: bytes | str) -> None:
    """Write `path` readable by its owner only (0600), atomically: secrets and the stack's
    state live in such files, and an older file of that name keeps neither its mode nor a
    half-written body."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, 0o600)  # an older tmp file of that name kept its mode
    os.replace(tmp, path)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0): look at its state.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def command_line(pid: int) -> str | None:
    """The command line of a running process (arguments joined by spaces), None when it is
    gone or cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def runs(pid: int | None, marker: str) -> bool:
    """True when `pid` is alive and still the process that was recorded: its command line
    names `marker` (the data folder it was started on). A pid the system handed to another
    process since is not ours, and is never signalled."""
    if not pid or not pid_alive(pid):
        return False
    cmdline = command_line(pid)
    return cmdline is not None and marker in cmdline


def stop_pid(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM, wait, then SIGKILL: the broker flushes its logs on TERM."""
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def run(cmd: list[str], what: str, secrets: tuple[str, ...] = (), **kw) -> subprocess.CompletedProcess:
    """Run a set-up command; on failure raise one clear sentence naming the command (each of
    `secrets` it holds shown as ***)."""
    shown = " ".join(cmd)
    for secret in secrets:
        shown = shown.replace(secret, "***")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise InfraError(f"{what} failed: {cmd[0]} is not installed", shown) from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        for secret in secrets:
            tail = tail.replace(secret, "***")
        raise InfraError(f"{what} failed (exit {proc.returncode})", shown, tail)
    return proc


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
