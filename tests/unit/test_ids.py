"""Gateway request ids: unique per request, and per process after a fork."""

from __future__ import annotations

import os

from lvm_gateway.gateway.ids import is_gateway_id, new_gateway_id


def test_ids_have_the_contract_form_and_do_not_repeat() -> None:
    ids = [new_gateway_id() for _ in range(20_000)]
    assert all(is_gateway_id(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_worker_draws_ids_of_its_own() -> None:
    # Without a reseed the child would draw the very ids the parent draws next.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, " ".join(new_gateway_id() for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 4096).decode().split()
    os.close(read)
    parent = [new_gateway_id() for _ in range(4)]
    assert len(child) == 4 and not set(child) & set(parent)
