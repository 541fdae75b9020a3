"""The bot's SQLite data store: opening, migrations by version, transactions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from genbot.store import DATABASE_NAME, Store, StoreError

NOTES_V1 = ["CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)"]
NOTES_V2 = [*NOTES_V1, "ALTER TABLE notes ADD COLUMN author INTEGER NOT NULL DEFAULT 0"]


async def test_open_creates_the_folder_and_data_survives_a_reopen(tmp_path: Path) -> None:
    data_dir = tmp_path / "deep" / "data"
    async with Store(data_dir) as store:
        assert store.path == data_dir / DATABASE_NAME and store.path.is_file()
        assert await store.version("notes") == 0
        assert await store.migrate("notes", NOTES_V1) == 1
        assert await store.execute("INSERT INTO notes (text) VALUES (?)", ("hello",)) == 1
    assert not store.is_open
    async with Store(data_dir) as store:
        assert await store.migrate("notes", NOTES_V1) == 1  # nothing to do
        assert await store.fetchall("SELECT id, text FROM notes") == [(1, "hello")]


async def test_a_new_step_migrates_old_data_and_components_are_independent(
    tmp_path: Path,
) -> None:
    async with Store(tmp_path) as store:
        await store.migrate("notes", NOTES_V1)
        await store.execute("INSERT INTO notes (text) VALUES ('old')")
    async with Store(tmp_path) as store:
        assert await store.migrate("notes", NOTES_V2) == 2
        assert await store.migrate("other", ["CREATE TABLE other (x INTEGER)"]) == 1
        assert await store.fetchone("SELECT text, author FROM notes") == ("old", 0)
        assert (await store.version("notes"), await store.version("other")) == (2, 1)


async def test_a_failing_step_is_rolled_back_whole(tmp_path: Path) -> None:
    broken = [*NOTES_V1, "CREATE TABLE half (x INTEGER); INSERT INTO nowhere VALUES (1)"]
    async with Store(tmp_path) as store:
        with pytest.raises(StoreError, match="migrating notes to version 2 failed: no such"):
            await store.migrate("notes", broken)
        assert await store.version("notes") == 1
        tables = await store.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
        assert ("half",) not in tables and ("notes",) in tables
        assert await store.migrate("notes", NOTES_V2) == 2  # the store goes on


async def test_processes_sharing_a_data_dir_open_and_migrate_it_once(tmp_path: Path) -> None:
    """Shard processes on one machine share ``data_dir`` and start together (each store is
    its own connection, as a process's is): none fails on another's lock, every step runs
    once."""
    steps = [*NOTES_V2, "INSERT INTO notes (text) VALUES ('seeded; once')"]
    for round_ in range(10):
        stores = [Store(tmp_path / str(round_)) for _ in range(8)]
        try:  # (every open and migration ends before the stores close, failed or not)
            opened = await asyncio.gather(*(s.open() for s in stores), return_exceptions=True)
            assert opened == [None] * 8
            migrated = await asyncio.gather(
                *(s.migrate("notes", steps) for s in stores), return_exceptions=True
            )
            assert migrated == [3] * 8
            assert await stores[0].fetchall("SELECT text FROM notes") == [("seeded; once",)]
        finally:
            await asyncio.gather(*(store.close() for store in stores))


async def test_a_database_from_a_newer_genbot_is_refused(tmp_path: Path) -> None:
    async with Store(tmp_path) as store:
        await store.migrate("notes", NOTES_V2)
        with pytest.raises(StoreError, match="version 2, but this genbot knows versions up to 1"):
            await store.migrate("notes", NOTES_V1)


async def test_bad_use_gets_clear_errors(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(StoreError, match="not open"):
        await store.execute("SELECT 1")
    async with store:
        with pytest.raises(ValueError, match="lowercase"):
            await store.migrate("Bad Name", NOTES_V1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot create the folder"):
        await Store(tmp_path / "file" / "data").open()
    (tmp_path / "junk" / DATABASE_NAME).parent.mkdir()
    (tmp_path / "junk" / DATABASE_NAME).write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="cannot open the database"):
        await Store(tmp_path / "junk").open()


async def test_a_transaction_commits_together_or_not_at_all(tmp_path: Path) -> None:
    async with Store(tmp_path) as store:
        await store.migrate("notes", NOTES_V1)
        with pytest.raises(RuntimeError, match="boom"):
            async with store.transaction():
                await store.execute("INSERT INTO notes (text) VALUES ('a')")
                raise RuntimeError("boom")
        assert await store.fetchall("SELECT text FROM notes") == []
        async with store.transaction():
            await store.executemany("INSERT INTO notes (text) VALUES (?)", [("a",), ("b",)])
        assert await store.fetchall("SELECT text FROM notes ORDER BY id") == [("a",), ("b",)]


async def test_another_tasks_statement_waits_for_a_transaction(tmp_path: Path) -> None:
    """A statement of another task does not slip into a transaction (and its rollback)."""
    async with Store(tmp_path) as store:
        await store.migrate("notes", NOTES_V1)
        inside, go_on = asyncio.Event(), asyncio.Event()

        async def rolled_back() -> None:
            async with store.transaction():
                await store.execute("INSERT INTO notes (text) VALUES ('rolled back')")
                inside.set()
                await asyncio.wait_for(go_on.wait(), 10)
                raise RuntimeError("undo")

        task = asyncio.create_task(rolled_back())
        await asyncio.wait_for(inside.wait(), 10)
        other = asyncio.create_task(store.execute("INSERT INTO notes (text) VALUES ('kept')"))
        go_on.set()
        with pytest.raises(RuntimeError, match="undo"):
            await task
        await asyncio.wait_for(other, 10)
        assert await store.fetchall("SELECT text FROM notes") == [("kept",)]
