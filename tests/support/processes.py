"""The ``herald`` command as a real process, for tests that watch what it prints."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERALD = str(Path(sys.executable).with_name("herald"))

CONSOLE_CONFIG = "channels:\n  console: {type: log}\nroutes:\n  default: {channels: [console]}\n"


@contextmanager
def herald_process(*args: str, **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """``herald ARGS…`` running for the block; killed at the end if it has not exited."""
    process = subprocess.Popen([HERALD, *args], text=True, **popen)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def run_herald(
    *args: str, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``herald ARGS…`` to its end, with its output captured."""
    return subprocess.run([HERALD, *args], env=env, capture_output=True, text=True, timeout=timeout)
