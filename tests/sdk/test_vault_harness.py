"""``ctx.vault`` in the local test harness (a random key per :class:`MemoryServices`, so per test
with the fixtures), and the vault's contract shared with the platform: tokens, refusals, one key per
module derived from the platform's secret key."""

from __future__ import annotations

from typing import Any

import pytest

from autoplat import JobContext, JobError
from autoplat.testing import MemoryServices, arun_step, run_step
from autoplat.vault import MAX_VALUE_BYTES, PREFIX, KeyVault, VaultError
from registry.crypto import module_vault


def seal_sync(ctx: JobContext) -> dict[str, Any]:
    token = ctx.vault.seal_sync(ctx.config["value"])
    return {"token": token, "back": ctx.vault.open_sync(token)}


async def seal_async(ctx: JobContext) -> dict[str, Any]:
    token = await ctx.vault.seal(ctx.config["value"])
    return {"token": token, "back": await ctx.vault.open(token)}


async def open_given(ctx: JobContext) -> Any:
    return await ctx.vault.open(ctx.config["token"])


async def wrong_twin(ctx: JobContext) -> Any:
    return ctx.vault.seal_sync(1)


VALUE = {"user": "ada", "password": "harness-secret-1", "n": [1, 2.5, None, True]}


async def test_round_trip_in_sync_and_async_handlers() -> None:
    memory = MemoryServices()
    for handler in (seal_sync, seal_async):
        step = await arun_step(handler, config={"value": VALUE}, memory=memory)
        assert step.result["back"] == VALUE
        assert step.result["token"].startswith(PREFIX) and step.result["token"].isascii()
        assert "harness-secret-1" not in step.result["token"]
        # The same services (one test) open it in a later run.
        again = await arun_step(open_given, config={"token": step.result["token"]}, memory=memory)
        assert again.result == VALUE


def test_run_step_has_a_vault_too() -> None:
    step = run_step(seal_sync, config={"value": "plain string"})
    assert step.result["back"] == "plain string"


async def test_tokens_open_only_with_the_key_they_were_sealed_with() -> None:
    sealed = await arun_step(seal_async, config={"value": VALUE})
    # Another test's services (another key) cannot open it: the step fails with the vault's error.
    with pytest.raises(VaultError, match="cannot be opened"):
        await arun_step(open_given, config={"token": sealed.result["token"]})
    token = sealed.result["token"]
    middle = len(token) // 2
    tampered = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    memory = MemoryServices()
    step = await arun_step(open_given, config={"token": tampered}, memory=memory, raise_errors=False)
    assert isinstance(step.error, VaultError) and isinstance(step.error, JobError)
    assert step.error.message.startswith("the vault token cannot be opened: it was altered")


async def test_the_sync_twin_in_an_async_handler_says_to_await() -> None:
    with pytest.raises(RuntimeError, match="use `await`"):
        await arun_step(wrong_twin)


def test_refusals() -> None:
    vault = KeyVault.generate()
    with pytest.raises(VaultError, match=f"at most {MAX_VALUE_BYTES}"):
        vault.seal_now("x" * MAX_VALUE_BYTES)
    assert vault.open_now(vault.seal_now("x" * (MAX_VALUE_BYTES - 2))) == "x" * (MAX_VALUE_BYTES - 2)
    with pytest.raises(VaultError, match="not JSON-serialisable"):
        vault.seal_now(float("nan"))
    for bad in ("", "gAAAAA", PREFIX + "not-fernet", 42, None, PREFIX + "x" * (200 * 1024)):
        with pytest.raises(VaultError):
            vault.open_now(bad)


def test_module_keys_are_derived_per_module_from_the_platform_key() -> None:
    key = "platform-secret-key-with-enough-entropy-0123456789"
    token = module_vault(key, "module-a").seal_now({"a": 1})
    assert module_vault(key, "module-a").open_now(token) == {"a": 1}  # derived, not random
    with pytest.raises(VaultError, match="sealed for another module"):
        module_vault(key, "module-b").open_now(token)
    # A changed platform key makes every token unreadable (documented: docs/services.md, "Vault").
    with pytest.raises(VaultError):
        module_vault(key + "-rotated", "module-a").open_now(token)
