"""Where tenancy records are kept: a SQLite file beside the config (nothing to install), or
Redis when the config's store is Redis, so that every gateway behind a balancer sees the same
projects, users and keys.

Both keep three kinds of record (project, user, key) as JSON by id, and a revision number that
every change increments in the same transaction. A running gateway polls the revision (one
tiny read) and reloads its snapshot when it moved; with Redis the change is also published on
the store's event channel, so gateways reload at once instead of at their next poll.
Both are synchronous: the CLI calls them directly, a gateway from a worker thread.
"""
from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from typing import Any, Protocol

KINDS = ("project", "user", "key")
CHANGED_EVENT = "auth:changed"


class BackendError(Exception):
    """The store cannot be read or written; the message says which and why."""


class Backend(Protocol):
    where: str                       # for messages: the file, or the Redis URL without its password

    def all(self, kind: str) -> dict[str, dict[str, Any]]: ...
    def get(self, kind: str, rid: str) -> dict[str, Any] | None: ...
    def put(self, items: Iterable[tuple[str, str, dict[str, Any]]]) -> None: ...
    def delete(self, kind: str, rid: str) -> bool: ...
    def revision(self) -> int: ...
    def close(self) -> None: ...


class SqliteBackend:
    def __init__(self, path: str) -> None:
        self.where = path
        fresh = not os.path.exists(path)
        try:
            if fresh:   # created private: it holds key digests and user emails
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            self._db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS records (kind TEXT NOT NULL, id TEXT NOT NULL, "
                             "body TEXT NOT NULL, PRIMARY KEY (kind, id))")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('revision', 0)")
        except (sqlite3.Error, OSError) as exc:
            raise BackendError(f"cannot open the auth store {path}: {exc}") from None

    def all(self, kind: str) -> dict[str, dict[str, Any]]:
        rows = self._run("SELECT id, body FROM records WHERE kind = ?", (kind,))
        return {rid: json.loads(body) for rid, body in rows}

    def get(self, kind: str, rid: str) -> dict[str, Any] | None:
        rows = self._run("SELECT body FROM records WHERE kind = ? AND id = ?", (kind, rid))
        return json.loads(rows[0][0]) if rows else None

    def put(self, items: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        self._write([("INSERT OR REPLACE INTO records VALUES (?, ?, ?)", (kind, rid, json.dumps(body)))
                     for kind, rid, body in items])

    def delete(self, kind: str, rid: str) -> bool:
        return self._write([("DELETE FROM records WHERE kind = ? AND id = ?", (kind, rid))]) > 0

    def revision(self) -> int:
        return int(self._run("SELECT value FROM meta WHERE name = 'revision'", ())[0][0])

    def close(self) -> None:
        self._db.close()

    def _run(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise BackendError(f"cannot read the auth store {self.where}: {exc}") from None

    def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> int:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                changed = sum(self._db.execute(sql, args).rowcount for sql, args in statements)
                self._db.execute("UPDATE meta SET value = value + 1 WHERE name = 'revision'")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise BackendError(f"cannot write the auth store {self.where}: {exc}") from None
        return changed


class RedisBackend:
    def __init__(self, url: str, prefix: str, where: str) -> None:
        import redis

        self.where = where
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._r = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
        self._prefix = prefix + "auth:"
        self._channel = prefix + "events"

    def all(self, kind: str) -> dict[str, dict[str, Any]]:
        got = self._call(self._r.hgetall, self._prefix + kind)
        return {rid.decode(): json.loads(body) for rid, body in got.items()}

    def get(self, kind: str, rid: str) -> dict[str, Any] | None:
        body = self._call(self._r.hget, self._prefix + kind, rid)
        return json.loads(body) if body is not None else None

    def put(self, items: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        def tx() -> None:
            pipe = self._r.pipeline(transaction=True)
            for kind, rid, body in items:
                pipe.hset(self._prefix + kind, rid, json.dumps(body))
            pipe.incr(self._prefix + "revision")
            pipe.execute()
        self._call(tx)
        self._announce()

    def delete(self, kind: str, rid: str) -> bool:
        def tx() -> int:
            pipe = self._r.pipeline(transaction=True)
            pipe.hdel(self._prefix + kind, rid)
            pipe.incr(self._prefix + "revision")
            return int(pipe.execute()[0])
        gone = self._call(tx) > 0
        self._announce()
        return gone

    def revision(self) -> int:
        return int(self._call(self._r.get, self._prefix + "revision") or 0)

    def close(self) -> None:
        self._r.close()

    def _announce(self) -> None:
        # The shape the gateways' store listener reads (store/redis.py): they reload at once.
        self._call(self._r.publish, self._channel, json.dumps({"from": "auth", "event": CHANGED_EVENT}))

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._errors as exc:
            raise BackendError(f"cannot reach the auth store at {self.where}: {exc}") from None


def open_backend(auth_file: str | None, store_backend: str, store_url: str, store_prefix: str) -> Backend:
    """Redis when the config's store is Redis (shared by every gateway), else the SQLite file."""
    if store_backend == "redis":
        from wire_gateway.telemetry.masking import mask

        return RedisBackend(store_url, store_prefix, mask(store_url))
    if auth_file is None:
        raise BackendError("the auth store lives beside the config file: pass --config PATH "
                           "(or set WIRE_GATEWAY_CONFIG)")
    return SqliteBackend(auth_file)
