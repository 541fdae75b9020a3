"""``@genbot.gatekeep``: at most one run of a coroutine function per set of arguments.

Calling a gatekept function never waits for it. It returns a :class:`GateHandle` at once:

- no run with the same arguments in progress: a run is scheduled as a task;
- a run in progress: nothing happens (the running instance is expected to see the same
  state), unless forced, which queues exactly one more run for after the current one
  (several forces while one is running still queue one) - never two in parallel.

Forcing has two spellings: ``self.attend.force(channel)``, which a type checker checks like
the plain call, and the design's ``self.attend(channel, force=True)``, which works the same at
run time but which a type checker refuses (a keyword cannot be added to a ``ParamSpec``
signature; a function with a parameter named ``force`` gets that keyword itself). Arguments are
matched by value after binding them to the function's signature, so ``attend(channel)`` and
``attend(channel=channel)`` share one gate.

Awaiting the handle returns at once too (``True`` when this call started or queued a run), so
``await self.attend.force(channel)`` inside ``attend`` cannot deadlock; use
:meth:`GateHandle.wait` to wait until the runs have finished.

On methods the key includes ``self``, so each bot instance has its own runs: reading the
attribute on an instance gives a :class:`BoundGatekeeper` (typed like a bound method), on the
class the :class:`Gatekeeper` itself. An exception releases the key and is reported to the
owner's error handling: ``self.on_error(name, *args)`` when the first argument has an
``on_error`` coroutine (a :class:`discord.Client`), else the ``genbot.gatekeeping`` logger.

The module is named ``gatekeeping`` so that it cannot shadow the decorator: ``genbot.gatekeep``
is always the function.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Generator, Hashable
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["BoundGatekeeper", "GateHandle", "Gatekeeper", "gatekeep", "running"]

_log = logging.getLogger(__name__)

P = ParamSpec("P")
Q = ParamSpec("Q")
S = TypeVar("S")

#: Every gatekept run in progress, with the first argument of the call (``self`` on methods).
_RUNNING: dict[asyncio.Task[None], Any] = {}


def running(owner: Any = None) -> list[asyncio.Task[None]]:
    """Gatekept runs in progress; with ``owner``, only those whose first argument is it."""
    return [t for t, o in _RUNNING.items() if owner is None or o is owner]


class GateHandle:
    """What a gatekept call returns: awaitable at once, :meth:`wait` for the run itself."""

    def __init__(self, task: asyncio.Task[None] | None, scheduled: bool) -> None:
        self.task = task
        #: This call started a run or queued one (``False``: absorbed by the running one).
        self.scheduled = scheduled

    def __await__(self) -> Generator[Any, None, bool]:
        return self._now().__await__()

    async def _now(self) -> bool:
        return self.scheduled

    def done(self) -> bool:
        return self.task is None or self.task.done()

    async def wait(self) -> None:
        """Wait until the run (and any queued run) is over; never raises the run's exception.

        Raises
        ------
        RuntimeError
            Called from inside the run it waits for (it would wait for itself forever, and
            block the key with it).
        """
        if self.task is None:
            return
        if self.task is asyncio.current_task():
            raise RuntimeError("GateHandle.wait() called from inside the run it waits for")
        await asyncio.wait({self.task})

    def __repr__(self) -> str:
        return f"<GateHandle scheduled={self.scheduled} done={self.done()}>"


class _Run:
    __slots__ = ("pending", "task")

    def __init__(self) -> None:
        self.pending = False
        self.task: asyncio.Task[None] | None = None


class Gatekeeper(Generic[P]):
    """The callable ``@gatekeep`` makes; a descriptor, so it works on methods.

    ``gk(*args)`` runs ``fn(*args)`` unless a run with the same arguments is in progress;
    ``gk.force(*args)`` queues one more run after it. Both take exactly ``fn``'s parameters.
    """

    def __init__(self, fn: Callable[P, Awaitable[object]]) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@gatekeep needs an async function, got {fn!r}")
        self.fn = fn
        self._signature = inspect.signature(fn)
        # A function with a parameter named ``force`` gets ``force=`` itself; then only
        # ``.force()`` forces.
        self._force_keyword = "force" not in self._signature.parameters
        self._runs: dict[Hashable, _Run] = {}
        functools.update_wrapper(self, fn)

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Self: ...

    @overload
    def __get__(
        self: Gatekeeper[Concatenate[S, Q]], instance: S, owner: type[Any] | None = None
    ) -> BoundGatekeeper[Q]: ...

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any:
        if instance is None:
            return self
        return BoundGatekeeper(self, instance)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> GateHandle:
        # ``force=True`` is the design's spelling; it is not part of P, so it is untyped.
        return self._enter(args, kwargs, force=self._pop_force(kwargs))

    def force(self, *args: P.args, **kwargs: P.kwargs) -> GateHandle:
        """Like calling, but when a run is in progress, queue exactly one more after it."""
        return self._enter(args, kwargs, force=True)

    def _pop_force(self, kwargs: dict[str, Any]) -> bool:
        return bool(kwargs.pop("force", False)) if self._force_keyword else False

    def _key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        """The gate's key: the arguments bound to ``fn``'s signature, defaults applied.

        Raises
        ------
        TypeError
            The arguments do not fit ``fn``, or one of them is not hashable.
        """
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"@gatekeep {self.fn.__qualname__}: {exc}") from None
        bound.apply_defaults()
        key = tuple(
            (name, tuple(sorted(value.items())) if isinstance(value, dict) else value)
            for name, value in bound.arguments.items()
        )
        try:
            hash(key)
        except TypeError as exc:
            raise TypeError(
                f"@gatekeep {self.fn.__qualname__}: arguments must be hashable, got {args!r}"
            ) from exc
        return key

    def _enter(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, force: bool) -> GateHandle:
        key = self._key(args, kwargs)
        run = self._runs.get(key)
        if run is not None:
            if not force:
                return GateHandle(run.task, scheduled=False)
            run.pending = True
            return GateHandle(run.task, scheduled=True)
        run = self._runs[key] = _Run()
        task = asyncio.get_running_loop().create_task(
            self._loop(key, run, args, kwargs), name=f"gatekeep: {self.fn.__qualname__}"
        )
        run.task = task
        _RUNNING[task] = args[0] if args else None
        task.add_done_callback(lambda t: _RUNNING.pop(t, None))
        return GateHandle(task, scheduled=True)

    async def _loop(
        self, key: Hashable, run: _Run, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        try:
            while True:
                run.pending = False
                try:
                    await self.fn(*args, **kwargs)
                except Exception:
                    await self._report(args, kwargs)
                if not run.pending:
                    return
                # Let other tasks run first: a run that re-queues itself without awaiting
                # anything would otherwise starve the whole event loop.
                await asyncio.sleep(0)
        finally:
            if self._runs.get(key) is run:
                del self._runs[key]

    async def _report(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Called inside ``except``: hand the exception to the owner's ``on_error``."""
        on_error = getattr(args[0], "on_error", None) if args else None
        if on_error is not None and inspect.iscoroutinefunction(on_error):
            try:
                await on_error(self.fn.__name__, *args[1:], **kwargs)
                return
            except Exception:
                _log.exception(
                    "on_error failed while handling an error in %s", self.fn.__qualname__
                )
        _log.exception("Ignoring exception in %s", self.fn.__qualname__)

    def __repr__(self) -> str:
        return f"<Gatekeeper {self.fn.__qualname__}>"


class BoundGatekeeper(Generic[P]):
    """A :class:`Gatekeeper` read on an instance, as a bound method is: ``self`` comes first.

    ``bot.attend(channel)`` and ``bot.attend.force(channel)`` take the method's parameters
    without ``self``.
    """

    __slots__ = ("__func__", "__self__")

    def __init__(self, gatekeeper: Gatekeeper[...], instance: object) -> None:
        self.__func__ = gatekeeper
        self.__self__ = instance

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> GateHandle:
        force = self.__func__._pop_force(kwargs)
        return self.__func__._enter((self.__self__, *args), kwargs, force=force)

    def force(self, *args: P.args, **kwargs: P.kwargs) -> GateHandle:
        """Like calling, but when a run is in progress, queue exactly one more after it."""
        return self.__func__._enter((self.__self__, *args), kwargs, force=True)

    if not TYPE_CHECKING:  # at run time, like a bound method: the function's attributes

        def __getattr__(self, name: str) -> Any:
            return getattr(self.__func__, name)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, BoundGatekeeper)
            and other.__func__ is self.__func__
            and other.__self__ is self.__self__
        )

    def __hash__(self) -> int:
        return hash((id(self.__func__), id(self.__self__)))

    def __repr__(self) -> str:
        return f"<bound gatekeeper {self.__func__.fn.__qualname__} of {self.__self__!r}>"


def gatekeep(fn: Callable[P, Awaitable[object]]) -> Gatekeeper[P]:
    """Decorate an async function (or method) so it runs at most once per arguments at a time.

    Parameters
    ----------
    fn
        An ``async def`` function or method.

    Raises
    ------
    TypeError
        ``fn`` is not an async function.
    """
    return Gatekeeper(fn)
