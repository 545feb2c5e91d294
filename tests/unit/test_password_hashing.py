"""Passwords: argon2id at the library's defaults in the product, hashed off the event loop."""

from __future__ import annotations

import asyncio

import argon2
import pytest
from argon2 import profiles

from registry import security


@pytest.fixture
def real_cost(monkeypatch: pytest.MonkeyPatch) -> argon2.PasswordHasher:
    """The hasher the product uses (tests/conftest.py swaps in a cheap one for the other tests)."""
    fresh = argon2.PasswordHasher()
    monkeypatch.setattr(security, "_hasher", fresh)
    monkeypatch.setattr(security, "_dummy_hash", None)
    return fresh


def test_the_product_hashes_with_argon2id_at_the_library_defaults(real_cost: argon2.PasswordHasher) -> None:
    params = argon2.extract_parameters(security.hash_password("a-long-enough-password"))
    defaults = profiles.RFC_9106_LOW_MEMORY
    assert params.type is argon2.Type.ID
    assert (params.time_cost, params.memory_cost, params.parallelism) == (
        defaults.time_cost,
        defaults.memory_cost,
        defaults.parallelism,
    )
    assert not security.needs_rehash(security.hash_password("x" * 12))


async def test_hashing_and_verifying_leave_the_event_loop_free(real_cost: argon2.PasswordHasher) -> None:
    """One login's hash takes ~0.15 s of CPU: done on the event loop it would stall every other
    request that long. The loop keeps turning while a hash is made and checked."""
    turns = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal turns
        while not done.is_set():
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start = turns
    stored = await security.hash_password_async("a-long-enough-password")
    assert await security.verify_password_async(stored, "a-long-enough-password")
    assert not await security.verify_password_async(stored, "wrong")
    assert not await security.verify_password_async(None, "a-long-enough-password")  # unknown user
    done.set()
    await task
    # Blocking calls would let the ticker run once per await at most (four here); a free loop turns
    # it many times while each argon2 computation runs in its thread.
    assert turns - start > 50
