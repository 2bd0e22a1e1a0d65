"""Child `block` processes for the benches that play a client against live servers.

Shared by bench/predictor_accuracy.py and bench/proxy_overhead.py (imported as a sibling
module: the script's folder is on sys.path when a bench runs).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def spawn(args: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    """`block <args>` from this installation on a free loopback port; its output is dropped."""
    port = free_port()
    exe = Path(sys.executable).parent / "block"
    proc = subprocess.Popen(
        [str(exe), *args, "--port", str(port), "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


async def wait_ready(session: aiohttp.ClientSession, url: str, attempts: int) -> None:
    """Poll `url` every 0.1 s until it answers 200, at most `attempts` times."""
    for _ in range(attempts):
        try:
            async with session.get(url) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")
