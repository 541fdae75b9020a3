"""@gatekeep: single flight per arguments, force queues one more run, errors release the key."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from typing import Any

import pytest

from genbot.gatekeeping import BoundGatekeeper, GateHandle, Gatekeeper, gatekeep, running


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.active = 0
        self.max_active = 0
        self.release = asyncio.Event()
        self.errors: list[tuple[str, tuple[Any, ...], BaseException | None]] = []

    async def on_error(self, name: str, *args: Any) -> None:
        self.errors.append((name, args, sys.exc_info()[1]))

    @gatekeep
    async def work(self, key: str) -> None:
        self.calls.append((key,))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.wait_for(self.release.wait(), 5)
        finally:
            self.active -= 1


async def test_call_schedules_at_once_and_returns_handle() -> None:
    r = Recorder()
    handle = r.work("a")
    assert isinstance(handle, GateHandle)
    assert handle.scheduled and not handle.done()
    assert await handle is True  # awaiting does not wait for the run
    await asyncio.sleep(0)
    assert r.calls == [("a",)]
    r.release.set()
    await asyncio.wait_for(handle.wait(), 5)
    assert handle.done()


async def test_second_call_while_running_is_absorbed() -> None:
    r = Recorder()
    first = r.work("a")
    await asyncio.sleep(0)
    second = r.work("a")
    assert second.scheduled is False
    assert await second is False
    r.release.set()
    await asyncio.wait_for(first.wait(), 5)
    assert r.calls == [("a",)]
    # the key is free again
    r.work("a")
    await asyncio.wait_for(asyncio.gather(*running(r)), 5)
    assert r.calls == [("a",), ("a",)]


async def test_different_arguments_and_instances_run_in_parallel() -> None:
    r1, r2 = Recorder(), Recorder()
    handles = [r1.work("a"), r1.work("b"), r2.work("a")]
    await asyncio.sleep(0)
    assert all(h.scheduled for h in handles)
    assert r1.max_active == 2 and r2.max_active == 1
    assert len(running(r1)) == 2 and len(running(r2)) == 1
    r1.release.set()
    r2.release.set()
    for h in handles:
        await asyncio.wait_for(h.wait(), 5)
    assert running(r1) == [] and running(r2) == []


async def test_force_queues_exactly_one_more_run_never_parallel() -> None:
    r = Recorder()
    first = r.work("a")
    await asyncio.sleep(0)
    forced = [r.work("a", force=True) for _ in range(3)]
    assert all(h.scheduled for h in forced)
    r.release.set()
    await asyncio.wait_for(first.wait(), 5)
    assert r.calls == [("a",), ("a",)]
    assert r.max_active == 1


async def test_await_inside_the_run_does_not_deadlock() -> None:
    runs: list[int] = []

    class Bot:
        @gatekeep
        async def attend(self, channel: int) -> None:
            runs.append(channel)
            if len(runs) < 3:
                assert await self.attend(channel, force=True) is True

    handle = Bot().attend(7)
    await asyncio.wait_for(handle.wait(), 5)
    assert runs == [7, 7, 7]


async def test_waiting_for_itself_raises_instead_of_hanging() -> None:
    errors: list[BaseException] = []
    runs: list[int] = []

    class Bot:
        @gatekeep
        async def attend(self, channel: int) -> None:
            runs.append(channel)
            if len(runs) == 1:
                try:
                    await self.attend(channel, force=True).wait()
                except RuntimeError as error:
                    errors.append(error)

    bot = Bot()
    await asyncio.wait_for(bot.attend(1).wait(), 5)
    assert len(errors) == 1 and runs == [1, 1]  # the queued run still ran
    assert running(bot) == []


async def test_exception_releases_key_and_reaches_on_error() -> None:
    class Failing(Recorder):
        @gatekeep
        async def boom(self, x: int) -> None:
            self.calls.append((x,))
            raise RuntimeError("boom")

    r = Failing()
    await asyncio.wait_for(r.boom(1).wait(), 5)
    assert [(n, a, type(e)) for n, a, e in r.errors] == [("boom", (1,), RuntimeError)]
    await asyncio.wait_for(r.boom(1).wait(), 5)
    assert r.calls == [(1,), (1,)]
    assert len(r.errors) == 2


async def test_exception_without_owner_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    @gatekeep
    async def plain(x: int) -> None:
        raise ValueError("plain failure")

    with caplog.at_level(logging.ERROR, logger="genbot.gatekeeping"):
        await asyncio.wait_for(plain(1).wait(), 5)
    assert any("plain" in r.getMessage() and r.exc_info for r in caplog.records)
    assert running() == []


async def test_cancellation_releases_key() -> None:
    r = Recorder()
    handle = r.work("a")
    await asyncio.sleep(0)
    assert handle.task is not None
    handle.task.cancel()
    await asyncio.wait_for(handle.wait(), 5)
    again = r.work("a")
    assert again.scheduled
    r.release.set()
    await asyncio.wait_for(again.wait(), 5)
    assert len(r.calls) == 2


def test_rejects_sync_functions() -> None:
    with pytest.raises(TypeError, match="async"):
        gatekeep(lambda: None)  # type: ignore[arg-type]


async def test_unhashable_arguments_rejected_clearly() -> None:
    @gatekeep
    async def f(x: object) -> None:
        return None

    with pytest.raises(TypeError, match="hashable"):
        f([1])


def test_genbot_gatekeep_is_the_decorator_and_no_module_shadows_it() -> None:
    # In a fresh interpreter, importing the module first: the package attribute stays the
    # function, and "import genbot.gatekeep" finds no module of that name to bind over it.
    code = (
        "import sys, genbot.gatekeeping as module, genbot\n"
        "assert module is sys.modules['genbot.gatekeeping']\n"
        "assert genbot.gatekeep is module.gatekeep\n"
        "assert 'genbot.gatekeep' not in sys.modules\n"
        "try:\n"
        "    import genbot.gatekeep\n"
        "except ModuleNotFoundError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('genbot.gatekeep is a module')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_force_method_queues_one_more_run_like_force_true() -> None:
    r = Recorder()
    first = r.work("a")
    await asyncio.sleep(0)
    forced = [r.work.force("a"), r.work.force(key="a"), r.work("a", force=True)]
    assert all(h.scheduled for h in forced)
    r.release.set()
    await asyncio.wait_for(first.wait(), 5)
    assert r.calls == [("a",), ("a",)]
    assert r.max_active == 1


async def test_a_parameter_named_force_gets_the_keyword() -> None:
    seen: list[bool] = []
    started, release = asyncio.Event(), asyncio.Event()

    @gatekeep
    async def push(force: bool = False) -> None:
        seen.append(force)
        started.set()
        await asyncio.wait_for(release.wait(), 5)

    first = push(force=True)
    await asyncio.wait_for(started.wait(), 5)
    assert push(force=True).scheduled is False  # the same arguments: absorbed, not forced
    assert push.force(force=True).scheduled is True
    release.set()
    await asyncio.wait_for(first.wait(), 5)
    assert seen == [True, True]


async def test_positional_and_keyword_arguments_share_one_gate() -> None:
    r = Recorder()
    first = r.work("a")
    assert r.work(key="a").scheduled is False
    r.release.set()
    await asyncio.wait_for(first.wait(), 5)
    assert r.calls == [("a",)]


async def test_wrong_arguments_fail_at_the_call_not_in_the_run() -> None:
    r = Recorder()
    with pytest.raises(TypeError, match=r"Recorder\.work"):
        r.work()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"Recorder\.work"):
        r.work.force("a", "b")  # type: ignore[call-arg]
    assert running(r) == []


async def test_class_access_gives_the_gatekeeper_instance_access_a_bound_one() -> None:
    r = Recorder()
    assert isinstance(Recorder.work, Gatekeeper)
    bound = r.work
    assert isinstance(bound, BoundGatekeeper)
    assert bound.__self__ is r and bound.__func__ is Recorder.work
    assert bound == r.work and hash(bound) == hash(r.work) and bound != Recorder().work
    assert r.work.__name__ == "work" and "Recorder.work" in repr(bound)
    handle = Recorder.work(r, "a")  # through the class, self passed explicitly
    assert r.work("a").scheduled is False  # the same gate as r.work("a")
    r.release.set()
    await asyncio.wait_for(handle.wait(), 5)
    assert r.calls == [("a",)]


async def test_a_run_that_requeues_itself_does_not_starve_the_loop() -> None:
    runs = 0

    @gatekeep
    async def busy() -> None:  # awaits nothing, re-queues itself 200 times
        nonlocal runs
        runs += 1
        if runs < 200:
            busy(force=True)

    seen: list[int] = []

    async def other() -> None:
        seen.append(runs)

    handle = busy()
    other_task = asyncio.ensure_future(other())
    await asyncio.wait_for(handle.wait(), 5)
    await other_task
    assert runs == 200
    assert seen[0] < 200, "another task got to run between the queued runs"
