"""BLAS threads: one by default, an operator's setting kept, an explicit number first."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from threadpoolctl import threadpool_info

from lvm_gateway import blas

_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@pytest.fixture(autouse=True)
def _restore(monkeypatch: pytest.MonkeyPatch):
    for var in _ENV:
        monkeypatch.delenv(var, raising=False)
    yield
    blas.limit_blas_threads(1)  # the test process's own pool back to what the suite runs with


def blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_one_thread_by_default_here_and_in_workers() -> None:
    assert blas.limit_blas_threads() == 1
    assert blas_threads() <= {1}
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['OPENBLAS_NUM_THREADS'])"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "1"


def test_an_operators_setting_is_kept_and_an_explicit_number_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert blas.limit_blas_threads() == 2
    assert all(os.environ[var] == "2" for var in _ENV)
    assert blas.limit_blas_threads(1) == 1
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
