"""Freed large tensors stay in the C heap for the next force call (glibc only)."""

import os
import subprocess
import sys
import textwrap

import pytest

_KEPT_BYTES = textwrap.dedent("""
    import ctypes, sys
    import torch
    from mlmd.allocator import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    applied = keep_freed_memory() if sys.argv[1] == "on" else False
    before = libc.mallinfo2().fordblks
    block = torch.ones(4 * 1024 * 1024 // 4)  # 4 MB, above glibc's default mmap threshold
    del block
    print(applied, libc.mallinfo2().fordblks - before)
""")


def _kept_bytes(mode: str, env: dict[str, str] | None = None) -> tuple[bool, int]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | (env or {})
    out = subprocess.run([sys.executable, "-c", _KEPT_BYTES, mode], capture_output=True, text=True, check=True,
                         env=environment).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings")
def test_freed_block_is_kept_for_reuse_only_when_applied():
    assert _kept_bytes("off") == (False, pytest.approx(0, abs=1 << 20))  # default: handed back to the system
    applied, kept = _kept_bytes("on")
    assert applied and kept >= 4 * 1024 * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings")
def test_user_allocator_settings_are_left_alone():
    applied, kept = _kept_bytes("on", {"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert not applied and kept < 1 << 20

