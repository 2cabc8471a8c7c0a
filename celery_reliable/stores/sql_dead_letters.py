"""The dead-letter index of the SQL store: one row per dead-lettered task id.

Indexed on ``dead_at`` and on each filter column with ``dead_at``, so a page
is an index range read; paging is by keyset cursor (dead_at, task id).
Writing an entry is :meth:`.sql.SQLStore.dead_letter` (it moves the task's
record here in the same transaction).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, fields
from typing import Any

from sqlalchemy import Connection, RowMapping, and_, delete, func, or_, select, update

from celery_reliable.stores.model import (
    DeadLetter,
    DeadLetterPage,
    DeadLetterQuery,
    Failure,
    TaskRecord,
    page_cursor,
    parse_cursor,
)
from celery_reliable.stores.sql_base import SQLBase


class SQLDeadLetters(SQLBase):
    def get_dead_letter(self, task_id: str) -> DeadLetter | None:
        dl = self.schema.dead_letters
        query = select(dl).where(dl.c.task_id == task_id)
        row = self._read(lambda conn: conn.execute(query).mappings().first())
        return None if row is None else _dead_letter(row)

    def list_dead_letters(
        self, query: DeadLetterQuery, limit: int = 100, cursor: str | None = None
    ) -> DeadLetterPage:
        dl = self.schema.dead_letters
        position = parse_cursor(cursor)
        where: list[Any] = [
            dl.c[column] == value
            for column, value in (("name", query.name), ("exc_type", query.exc_type),
                                  ("reason", query.reason), ("queue", query.queue))
            if value is not None
        ]
        if query.since is not None:
            where.append(dl.c.dead_at >= query.since)
        if query.until is not None:
            where.append(dl.c.dead_at <= query.until)
        if query.text:
            where.append(func.lower(dl.c.error).contains(query.text.lower(), autoescape=True))
        replayed = dl.c.replayed_at.is_not(None) & (dl.c.replayed_at >= dl.c.dead_at)
        if query.replayed is True:
            where.append(replayed)
        elif query.replayed is False:
            where.append(~replayed)
        if position is not None:
            at, task_id = position
            where.append(or_(dl.c.dead_at < at, and_(dl.c.dead_at == at, dl.c.task_id < task_id)))
        select_page = (select(dl).where(*where).order_by(dl.c.dead_at.desc(), dl.c.task_id.desc())
                       .limit(limit + 1))
        rows = self._read(lambda conn: conn.execute(select_page).mappings().all())
        page = [_dead_letter(row) for row in rows[:limit]]
        return DeadLetterPage(page, page_cursor(page[-1]) if len(rows) > limit else None)

    def claim_replays(self, task_ids: Sequence[str], force: bool) -> list[str]:
        dl = self.schema.dead_letters
        wanted = list(dict.fromkeys(task_ids))

        def work(conn: Connection) -> list[str]:
            marked: set[str] = set()
            for chunk in _chunks(wanted):
                query = select(dl.c.task_id, dl.c.dead_at, dl.c.replayed_at).where(
                    self.among(dl.c.task_id, chunk)).order_by(dl.c.task_id).with_for_update()
                rows = conn.execute(query).all()
                ids = [r.task_id for r in rows
                       if force or r.replayed_at is None or r.replayed_at < r.dead_at]
                if ids:
                    conn.execute(update(dl).where(self.among(dl.c.task_id, ids)).values(
                        replays=dl.c.replays + 1, replayed_at=time.time()))
                marked.update(ids)
            return [t for t in wanted if t in marked]

        return self._write(work)

    def undo_replay(self, task_id: str) -> None:
        dl = self.schema.dead_letters
        undo = update(dl).where(dl.c.task_id == task_id, dl.c.replays > 0).values(
            replays=dl.c.replays - 1, replayed_at=None)
        self._write(lambda conn: conn.execute(undo))

    def delete_dead_letters(self, task_ids: Sequence[str]) -> int:
        dl = self.schema.dead_letters
        wanted = list(dict.fromkeys(task_ids))

        def work(conn: Connection) -> int:
            return sum(
                conn.execute(delete(dl).where(dl.c.task_id.in_(chunk))).rowcount
                for chunk in _chunks(wanted)
            )

        return self._write(work)


#: TaskRecord fields the dead-letter table has (not ``state``: every row there is dead).
_DEAD_RECORD = tuple(f.name for f in fields(TaskRecord) if f.name != "state")


def record_columns(record: TaskRecord) -> dict[str, Any]:
    """The record's part of a dead-letter row (reason, error and dead_at are the entry's)."""
    values = asdict(record)
    return {name: values[name] for name in _DEAD_RECORD
            if name not in ("reason", "error", "dead_at")}


def _dead_letter(row: RowMapping) -> DeadLetter:
    return DeadLetter(
        record=TaskRecord(state="dead", **{name: row[name] for name in _DEAD_RECORD}),
        failure=Failure(row["exc_type"], row["traceback"], row["attempts"], row["worker"],
                        row["queue"]),
        replays=row["replays"],
        replayed_at=row["replayed_at"],
    )


def _chunks(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
