"""Helpers for tests that kill a CLI run mid-way (the resume tests)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path


def sigkill_after_first(command: list[str], env: dict[str, str], folder: Path, pattern: str,
                        timeout: float = 180) -> None:
    """Run ``command`` and SIGKILL it as soon as a file matching ``pattern`` (a checkpoint's
    commit file) appears in ``folder``; fails if the run ends first."""
    victim = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and victim.poll() is None:
            if list(folder.glob(pattern)):
                break
            time.sleep(0.01)
        assert victim.poll() is None, "the run ended before it could be killed"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
