"""runtime/heap.trim gives freed heap back: the reason a coordinator's memory returns to its
baseline after a burst of connections (test_security's abuse test measures it end to end)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest

from tcpsched.runtime import heap

# In a child of its own, so this process's heap does not blur the figure: 200 MB of freed
# chunks below one live chunk at the top of the heap, which glibc never returns by itself.
CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from tcpsched.runtime import heap

    def rss_kib():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    chunks = [bytes(2000) + bytes([i % 256]) for i in range(100_000)]  # past pymalloc: malloc
    pin = bytes(2000) + b"pin"  # above them all, so free() cannot simply shrink the heap top
    del chunks
    freed = rss_kib()
    trimmed = heap.trim()
    print(json.dumps({"freed": freed, "after": rss_kib(), "trimmed": trimmed}))
""")


def _glibc() -> bool:
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _glibc(), reason="malloc_trim is glibc's; elsewhere trim() is a no-op")
def test_trim_returns_freed_heap_below_a_live_chunk() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=60, check=True)
    figures = json.loads(done.stdout)
    assert figures["trimmed"] is True
    assert figures["freed"] - figures["after"] > 150_000, figures  # KiB: most of the 200 MB


def test_trim_twice_is_harmless() -> None:
    first = heap.trim()
    assert heap.trim() is first
