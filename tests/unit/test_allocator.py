"""The gateway's malloc thresholds: set in-process through mallopt and handed to its workers."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from lvm_gateway import allocator

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")


def test_thresholds_are_set_here_and_passed_to_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(var, raising=False)
    assert allocator.keep_body_pieces_on_the_heap()
    assert os.environ["MALLOC_MMAP_THRESHOLD_"] == str(allocator.MMAP_THRESHOLD_BYTES)
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == str(allocator.TRIM_THRESHOLD_BYTES)
    # A worker started now inherits them (glibc reads them as the process starts).
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['MALLOC_MMAP_THRESHOLD_'])"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == str(allocator.MMAP_THRESHOLD_BYTES)


def test_an_operators_own_setting_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "262144")
    allocator.keep_body_pieces_on_the_heap()
    assert os.environ["MALLOC_MMAP_THRESHOLD_"] == "262144"
