"""The bot's data store: one SQLite database file in the ``data_dir`` setting, via ``aiosqlite``.

Every feature that keeps state across restarts (usage counts today, more later) keeps it here,
in tables of its own, created and changed by *migrations*: a feature names itself and lists its
schema steps, and :meth:`Store.migrate` runs the steps the database does not have yet, each in
one transaction with the feature's new version number, so a crash never leaves half a step::

    USAGE = [
        "CREATE TABLE usage (day TEXT, user INTEGER, tokens INTEGER, PRIMARY KEY (day, user))",
        "ALTER TABLE usage ADD COLUMN replies INTEGER NOT NULL DEFAULT 0",  # version 2
    ]

    async with Store("./genbot-data") as store:
        await store.migrate("usage", USAGE)
        await store.execute("INSERT INTO usage VALUES (?, ?, ?, 0)", ("2026-01-01", 1, 5))

Steps are append-only: a released step is never edited, a change is a new step. Versions are
kept per feature (table ``schema_versions``), so features migrate independently. A database
whose feature is at a higher version than the code knows (written by a newer genbot) is refused.

One connection serves the bot; statements run one at a time on aiosqlite's thread. Single
statements commit on their own; :meth:`Store.transaction` groups several (one at a time per
store). Waits for a locked database are bounded by SQLite's busy timeout (:data:`BUSY_TIMEOUT`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

__all__ = ["DATABASE_NAME", "Store", "StoreError"]

_log = logging.getLogger(__name__)

#: The database's file name inside ``data_dir``.
DATABASE_NAME = "genbot.sqlite3"
#: Seconds a statement waits for another process's lock on the database before failing.
BUSY_TIMEOUT = 5.0
#: Seconds :meth:`Store.close` waits for the connection's thread.
CLOSE_TIMEOUT = 10.0

_COMPONENT = re.compile(r"[a-z][a-z0-9_]{0,63}")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_versions (
    component TEXT PRIMARY KEY,
    version INTEGER NOT NULL
)
"""

Params = Sequence[Any]


class StoreError(RuntimeError):
    """The data store cannot be opened or migrated; the message names the file and the reason."""


class Store:
    """The bot's SQLite database, ``<data_dir>/genbot.sqlite3`` (see the module docstring).

    Parameters
    ----------
    data_dir:
        The folder; created (with its parents) when the store opens.
    """

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.path = Path(data_dir) / DATABASE_NAME
        self._db: aiosqlite.Connection | None = None
        self._closing: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None  # the task inside transaction()

    @property
    def is_open(self) -> bool:
        return self._db is not None

    async def open(self) -> None:
        """Create the folder and the database if needed, and connect; opening twice is once.

        Raises
        ------
        StoreError
            The folder cannot be created, or the file cannot be opened as a SQLite database.
        """
        if self._db is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(
                f"data_dir {str(self.path.parent)!r}: cannot create the folder: {error.strerror}"
            ) from error
        db: aiosqlite.Connection | None = None
        try:
            db = await aiosqlite.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            await _prepare(db)
        except sqlite3.Error as error:
            if db is not None:
                await db.close()
            raise StoreError(f"{self.path}: cannot open the database: {error}") from error
        self._db = db
        _log.debug("data store open: %s", self.path)

    async def close(self) -> None:
        """Close the connection (bounded by :data:`CLOSE_TIMEOUT`); closing twice is once, and
        a second call returns only when the first has closed it (two shutdown paths may race:
        a connection still closing when the event loop ends would fail in its thread)."""
        db, self._db = self._db, None
        if db is not None:
            self._closing = asyncio.ensure_future(self._close(db))
        if self._closing is not None:
            await asyncio.shield(self._closing)

    async def _close(self, db: aiosqlite.Connection) -> None:
        try:
            await asyncio.wait_for(db.close(), CLOSE_TIMEOUT)
        except Exception as exc:
            _log.warning("closing the data store %s failed: %r", self.path, exc)

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _connection(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError(f"{self.path}: the data store is not open; call open() first")
        return self._db

    # -- migrations ----------------------------------------------------------------------------

    async def version(self, component: str) -> int:
        """The schema version ``component`` is at (0: none of its steps ran yet)."""
        row = await self.fetchone(
            "SELECT version FROM schema_versions WHERE component = ?", (component,)
        )
        return int(row[0]) if row is not None else 0

    async def migrate(self, component: str, steps: Sequence[str]) -> int:
        """Bring ``component``'s tables to version ``len(steps)``: run the SQL scripts it does
        not have yet, in order, each in one transaction with its version number. Returns the
        version.

        Parameters
        ----------
        component:
            The feature's name: lowercase letters, digits and ``_``, starting with a letter.
        steps:
            SQL scripts (one or more statements each); step ``i`` makes version ``i + 1``.

        Raises
        ------
        ValueError
            A bad component name.
        StoreError
            A step failed (it is rolled back and named), or the database is at a higher version
            than ``steps`` reach (written by a newer genbot).
        """
        if not _COMPONENT.fullmatch(component):
            raise ValueError(f"component {component!r}: use lowercase letters, digits and _")
        async with self._turn():
            self._owner = asyncio.current_task()
            try:
                await self._migrate(component, steps)
            finally:
                self._owner = None
        return len(steps)

    async def _migrate(self, component: str, steps: Sequence[str]) -> None:
        have = await self.version(component)
        self._refuse_newer(component, have, steps)
        for version in range(have + 1, len(steps) + 1):
            await self._step(component, version, steps)

    def _refuse_newer(self, component: str, have: int, steps: Sequence[str]) -> None:
        if have > len(steps):
            raise StoreError(
                f"{self.path}: {component} tables are at version {have}, but this genbot "
                f"knows versions up to {len(steps)}; it was written by a newer genbot"
            )

    async def _step(self, component: str, version: int, steps: Sequence[str]) -> None:
        """Run step ``version`` and record it, in one transaction that first takes the write
        lock and reads the version again: another process sharing ``data_dir`` (a shard
        started at the same time) may have run it meanwhile, and then it is not run twice."""
        db = self._connection()
        try:
            await db.execute("BEGIN IMMEDIATE")
            have = await self.version(component)
            self._refuse_newer(component, have, steps)
            if have >= version:
                await db.execute("COMMIT")
                return
            for statement in _statements(steps[version - 1]):
                await db.execute(statement)
            await db.execute(
                "INSERT OR REPLACE INTO schema_versions (component, version) VALUES (?, ?)",
                (component, version),
            )
            await db.execute("COMMIT")
        except sqlite3.Error as error:
            raise StoreError(
                f"{self.path}: migrating {component} to version {version} failed: {error}"
            ) from error
        finally:
            if db.in_transaction:
                await db.execute("ROLLBACK")
        _log.info("data store: %s tables at version %d", component, version)

    # -- statements ----------------------------------------------------------------------------

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement (committed, unless inside :meth:`transaction`); returns the
        number of rows it changed.

        Raises
        ------
        sqlite3.Error
            What SQLite raised.
        """
        async with self._turn(), self._connection().execute(sql, params) as cursor:
            return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        """Run one statement for each of ``rows``."""
        async with self._turn():
            await self._connection().executemany(sql, rows)

    async def fetchone(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        """The first row of a query, or ``None``."""
        async with self._turn(), self._connection().execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return None if row is None else tuple(row)

    async def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Every row of a query."""
        async with self._turn(), self._connection().execute(sql, params) as cursor:
            rows = await cursor.fetchall()
        return [tuple(row) for row in rows]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Store]:
        """``async with store.transaction():`` the statements inside (from this task) commit
        together, or not at all when the block raises. One transaction at a time per store:
        other tasks' statements wait until it ends."""
        async with self._turn():
            db = self._connection()
            await db.execute("BEGIN IMMEDIATE")
            self._owner = asyncio.current_task()
            try:
                yield self
                await db.execute("COMMIT")
            except BaseException:  # a failed COMMIT (busy, I/O) leaves no transaction open
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise
            finally:
                self._owner = None

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """Hold the store for one statement, a migration or a transaction; a statement of the
        task that holds a transaction runs inside it."""
        if self._owner is not None and self._owner is asyncio.current_task():
            yield
            return
        async with self._lock:
            yield


async def _prepare(db: aiosqlite.Connection) -> None:
    """WAL mode and the versions table. Processes that share ``data_dir`` (shards started
    together) open it at the same moment, and SQLite then answers "locked" at once where
    waiting could deadlock, without its busy timeout; so this retries, within that timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BUSY_TIMEOUT
    delay = 0.01
    while True:
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute(_SCHEMA)
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or loop.time() + delay > deadline:
                raise
            _log.debug("data store busy while opening (%s); trying again", error)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of ``script``, split where SQLite says a statement is complete (so a
    ``;`` inside a string or a trigger's body does not split it)."""
    statement = ""
    for piece in script.split(";"):
        statement += piece + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \t\r\n;"):
                yield statement
            statement = ""
    if statement.strip(" \t\r\n;"):
        yield statement  # an unfinished statement: SQLite names the error
