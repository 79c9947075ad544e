"""`make setup` installs what the stack needs from Debian's packages, Java and Maven included
(run against a PATH where they are missing, with an apt-get that only records its call)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "setup" / "missing-packages.sh"


def _bin(tmp: Path, java_version: str | None, present: tuple[str, ...]) -> Path:
    """A PATH folder with the basic tools, the given ones (real), and a `java` of that version."""
    folder = tmp / "bin"
    folder.mkdir(parents=True)
    for tool in ("sh", "sed", "head", "ls", "id", "env", "make", "sha256sum", "cut", "cat", "rm", "touch",
                 *present):
        real = shutil.which(tool)
        if real:
            (folder / tool).symlink_to(real)
    if java_version:
        java = folder / "java"
        java.write_text(f'#!/bin/sh\necho \'openjdk version "{java_version}" 2023-01-01\' >&2\n')
        java.chmod(0o755)
    return folder


def _missing(folder: Path) -> list[str]:
    out = subprocess.run(["/bin/sh", str(SCRIPT)], env={"PATH": str(folder)}, capture_output=True,
                         text=True, check=True)
    return out.stdout.split()


def test_java_and_maven_are_listed_when_missing_or_too_old(tmp_path):
    assert {"default-jre-headless", "maven"} <= set(_missing(_bin(tmp_path / "a", None, ())))
    old = _missing(_bin(tmp_path / "b", "11.0.2", ("mvn",)))
    assert "default-jre-headless" in old and "maven" not in old
    legacy = _missing(_bin(tmp_path / "c", "1.8.0_392", ("mvn",)))
    assert "default-jre-headless" in legacy
    fine = _missing(_bin(tmp_path / "d", "17.0.15", ("mvn", "kcat", "promtool", "chromium")))
    assert "default-jre-headless" not in fine and "maven" not in fine


def test_make_setup_installs_them_with_apt_get(tmp_path):
    """As root (a fake `id`), `make system-packages` (part of `make setup`) asks apt-get for
    Java and Maven, and says so clearly when they are still missing afterwards (the fake
    apt-get installs nothing)."""
    folder = _bin(tmp_path, None, ("kcat", "promtool", "chromium"))
    (folder / "id").unlink()
    for name, body in (("id", "echo 0"), ("apt-get", f'echo "$@" >> {tmp_path}/apt.log')):
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    proc = subprocess.run(["make", "-s", "system-packages"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PATH": str(folder), "HOME": os.environ.get("HOME", "/root")})
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls[0] == "update -qq"
    assert calls[1].startswith("install -y -qq")
    assert {"default-jre-headless", "maven"} <= set(calls[1].split())
    assert "installing" in proc.stdout and "default-jre-headless" in proc.stdout
    assert proc.returncode != 0 and "still missing after apt-get" in proc.stdout
