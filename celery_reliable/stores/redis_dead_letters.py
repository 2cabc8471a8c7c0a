"""The dead-letter index of the Redis store: one entry per task, indexed by time and by
each filter value (name, reason, exception type, queue), so a listing is a range read."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from celery_reliable.stores.model import (
    DeadLetter,
    DeadLetterPage,
    DeadLetterQuery,
    Failure,
    TaskRecord,
    page_cursor,
    parse_cursor,
)
from celery_reliable.stores.redis_base import RedisBase, guarded, record_of

#: Dead-letter index entries examined per listing script call (keeps each call short).
LIST_BUDGET = 5000


class RedisDeadLetters(RedisBase):
    @guarded
    def dead_letter(
        self, task_id: str, key: str, reason: str, error: str | None,
        fallback: TaskRecord | None = None, failure: Failure | None = None,
        dead_at: float | None = None,
    ) -> None:
        state, record, due = self._names(key, task_id)
        tag = self._tag(key)
        f = failure or Failure()
        fields: list[Any] = []
        if fallback is not None:
            fields = [
                "name", fallback.name, "key", fallback.key, "fp", fallback.fingerprint,
                "body", fallback.body, "ctype", fallback.content_type,
                "cenc", fallback.content_encoding, "opts", fallback.options,
                "pub", int(fallback.published_at * 1000), "resc", fallback.rescues,
            ]
        self._run(
            "dead_letter", [record, due, f"{tag}:dead", state, f"{tag}:d:{task_id}"],
            [task_id, key, reason, error or "", f"{tag}:dead:", f.exc_type or "",
             f.traceback or "", f.attempts, f.worker or "", f.queue or "",
             "" if dead_at is None else int(dead_at * 1000), *fields],
        )

    # -- the dead-letter index ---------------------------------------------------------
    def _shard_tags(self) -> list[str]:
        return [f"{{{self.prefix}:{shard}}}" for shard in range(self.shards)]

    def _dead_tags(self, task_ids: Sequence[str]) -> dict[str, str]:
        """The shard tag of each existing dead letter (found by id: the key is not needed)."""
        tags = self._shard_tags()
        pipe = self.client.pipeline(transaction=False)
        for task_id in task_ids:
            for tag in tags:
                pipe.exists(f"{tag}:d:{task_id}")
        found = iter(pipe.execute())
        out = {}
        for task_id in task_ids:
            for tag in tags:
                if next(found):
                    out[task_id] = tag
        return out

    @guarded
    def get_dead_letter(self, task_id: str) -> DeadLetter | None:
        for tag in self._shard_tags():
            values = self.client.hgetall(f"{tag}:d:{task_id}")
            if values:
                return _dead_letter(task_id, values)
        return None

    @guarded
    def list_dead_letters(
        self, query: DeadLetterQuery, limit: int = 100, cursor: str | None = None
    ) -> DeadLetterPage:
        position = parse_cursor(cursor)
        found: list[DeadLetter] = []
        more = False
        for tag in self._shard_tags():
            entries, exhausted = self._list_shard(tag, query, limit, position)
            found += entries
            more = more or not exhausted
        found.sort(key=lambda e: (e.dead_at, e.task_id), reverse=True)
        page = found[:limit]
        more = more or len(found) > limit
        return DeadLetterPage(page, page_cursor(page[-1]) if more and page else None)

    def _list_shard(
        self, tag: str, query: DeadLetterQuery, limit: int, position: tuple[float, str] | None
    ) -> tuple[list[DeadLetter], bool]:
        """Up to ``limit`` matching entries of one shard; True when none is left after them."""
        index = f"{tag}:dead"
        for kind, value in (("n", query.name), ("r", query.reason), ("e", query.exc_type),
                            ("q", query.queue)):
            if value is not None:
                index = f"{tag}:dead:{kind}:{value}"
                break
        top = "+inf" if query.until is None else str(int(query.until * 1000))
        cursor_id = ""
        if position is not None:
            at = round(position[0] * 1000)
            if query.until is None or at <= int(query.until * 1000):
                top, cursor_id = str(at), position[1]
        bottom = "-inf" if query.since is None else str(math.ceil(query.since * 1000))
        replayed = "" if query.replayed is None else ("1" if query.replayed else "0")
        out: list[DeadLetter] = []
        while True:
            rows, last_score, last_id, done = self._run("dead_list", [index], [
                f"{tag}:d:", top, cursor_id, bottom, limit - len(out), LIST_BUDGET,
                query.name or "", query.exc_type or "", query.reason or "",
                query.queue or "", (query.text or "").lower(), replayed,
            ])
            for i in range(0, len(rows), 2):
                flat = rows[i + 1]
                out.append(_dead_letter(rows[i], dict(zip(flat[::2], flat[1::2], strict=True))))
            if done:
                return out, True
            if len(out) >= limit:
                return out, False
            top, cursor_id = str(last_score), str(last_id)

    @guarded
    def claim_replays(self, task_ids: Sequence[str], force: bool) -> list[str]:
        by_tag: dict[str, list[str]] = {}
        for task_id, tag in self._dead_tags(list(dict.fromkeys(task_ids))).items():
            by_tag.setdefault(tag, []).append(task_id)
        marked: list[str] = []
        for tag, ids in by_tag.items():
            marked += self._run("dead_replay", [f"{tag}:d:{t}" for t in ids],
                                ["1" if force else "0", *ids])
        return marked

    @guarded
    def undo_replay(self, task_id: str) -> None:
        for tag in self._dead_tags([task_id]).values():
            pipe = self.client.pipeline(transaction=True)
            pipe.hincrby(f"{tag}:d:{task_id}", "rep", -1)
            pipe.hdel(f"{tag}:d:{task_id}", "repat")
            pipe.execute()

    @guarded
    def delete_dead_letters(self, task_ids: Sequence[str]) -> int:
        by_tag: dict[str, list[str]] = {}
        for task_id, tag in self._dead_tags(list(dict.fromkeys(task_ids))).items():
            by_tag.setdefault(tag, []).append(task_id)
        deleted = 0
        for tag, ids in by_tag.items():
            deleted += int(self._run(
                "dead_delete", [f"{tag}:dead", *(f"{tag}:d:{t}" for t in ids)],
                [f"{tag}:dead:", *ids],
            ))
        return deleted


def _dead_letter(task_id: str, v: Mapping[Any, Any]) -> DeadLetter:
    return DeadLetter(
        record=record_of(task_id, v),
        failure=Failure(
            exc_type=v.get("exc") or None,
            traceback=v.get("tb") or None,
            attempts=int(v.get("att") or 0),
            worker=v.get("wrk") or None,
            queue=v.get("q") or None,
        ),
        replays=int(v.get("rep") or 0),
        replayed_at=int(v["repat"]) / 1000 if v.get("repat") else None,
    )
