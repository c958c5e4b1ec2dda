"""One question asked before any download: does the server answer at all?

Downloads (the dataset registry, GPT-2's tokenizer files through tiktoken, Hugging Face hub
weights) would otherwise hang or retry for minutes on a machine without a network. Each asks
`reachable(url)` first and, when it says no, fails at once with a message that says what to pass
instead (a local file or directory).
"""

from __future__ import annotations

import socket
import threading
import urllib.parse


def reachable(url: str, timeout: float) -> bool:
    """Whether `url`'s host accepts a TCP connection within `timeout` seconds.

    Only http(s) URLs are probed; any other scheme (file://, a local path) counts as reachable.
    NOTE: the DNS lookup inside create_connection ignores the socket timeout and can block for a
    long time offline, so the probe runs in a daemon thread that we stop waiting for after
    `timeout` seconds.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return True
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a malformed port
        return False
    result: list[bool] = []

    def probe():
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            result.append(True)
        except (OSError, ValueError):
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
