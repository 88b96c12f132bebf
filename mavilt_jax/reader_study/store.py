"""Readers and their ratings in an embedded SQLite database (STUDY/ratings.sqlite).

Every rating is written in its own transaction and committed before the page answers, in WAL mode
with ``synchronous=FULL``, so a rating the reader saw saved survives a killed server or a lost
browser. A reader is known by a random token (the browser keeps it in a cookie; the reader can
type it as a resume code elsewhere); every query that reads or writes ratings is keyed by the
reader the token names, so one reader can neither see nor change another's ratings.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import pathlib
import secrets
import sqlite3
from collections.abc import Sequence

import numpy as np

DB_NAME = "ratings.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS readers (
    reader_id  INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    token      TEXT NOT NULL UNIQUE,
    case_order TEXT NOT NULL,          -- JSON list of case ids: this reader's own random order
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ratings (
    reader_id  INTEGER NOT NULL REFERENCES readers(reader_id),
    case_id    TEXT NOT NULL,
    scale      TEXT NOT NULL,
    score      INTEGER NOT NULL CHECK (score BETWEEN 1 AND 5),
    comment    TEXT NOT NULL DEFAULT '',
    rated_at   TEXT NOT NULL,
    revisions  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (reader_id, case_id)
);
"""


class NameTaken(ValueError):
    """A reader of that name exists and the resume code given does not match."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class Store:
    """The ratings database of one study; safe to use from many threads (a connection per call)."""

    def __init__(self, study_dir: str | pathlib.Path, case_ids: Sequence[str], seed: int = 0):
        self.path = pathlib.Path(study_dir) / DB_NAME
        self.case_ids = sorted(case_ids)
        self.seed = seed
        db = self._connect()
        try:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: recorded in the database file
            db.executescript(_SCHEMA)
        finally:
            db.close()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT below).
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def _order(self, name: str) -> list[str]:
        # The reader's own order: seeded by the study's seed and the name, so it is reproducible.
        digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
        rng = np.random.default_rng([self.seed, digest])
        return [self.case_ids[i] for i in rng.permutation(len(self.case_ids))]

    def register(self, name: str, code: str = "") -> str:
        """The token of reader ``name``: a new reader gets a new one; an existing reader must give
        their code (the token) to continue, otherwise :class:`NameTaken`."""
        name = " ".join(name.split())
        if not name or len(name) > 80:
            raise ValueError("enter a name of 1 to 80 characters")
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT token FROM readers WHERE name = ?", (name,)).fetchone()
            if row is not None:
                db.execute("ROLLBACK")
                if code and secrets.compare_digest(code.strip(), row[0]):
                    return row[0]
                raise NameTaken(f"a reader named {name!r} has started; enter the resume code shown to them to continue")
            token = secrets.token_urlsafe(9)
            db.execute("INSERT INTO readers (name, token, case_order, created_at) VALUES (?, ?, ?, ?)",
                       (name, token, json.dumps(self._order(name)), _now()))
            db.execute("COMMIT")
            return token
        finally:
            db.close()

    def reader(self, token: str | None) -> dict | None:
        """{reader_id, name, order} of the token's reader, or None."""
        if not token:
            return None
        db = self._connect()
        try:
            row = db.execute("SELECT reader_id, name, case_order FROM readers WHERE token = ?", (token,)).fetchone()
        finally:
            db.close()
        return None if row is None else {"reader_id": row[0], "name": row[1], "order": json.loads(row[2])}

    def rate(self, reader_id: int, case_id: str, scale: str, score: int, comment: str = "") -> None:
        """Saves (or revises) one rating of this reader, committed before returning."""
        if case_id not in self.case_ids:
            raise ValueError(f"unknown case {case_id!r}")
        if not 1 <= int(score) <= 5:
            raise ValueError("a rating is an integer from 1 to 5")
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO ratings (reader_id, case_id, scale, score, comment, rated_at) VALUES (?, ?, ?, ?, ?, ?)"
                       " ON CONFLICT (reader_id, case_id) DO UPDATE SET score = excluded.score,"
                       " comment = excluded.comment, rated_at = excluded.rated_at, revisions = revisions + 1",
                       (reader_id, case_id, scale, int(score), comment[:2000], _now()))
            db.execute("COMMIT")
        finally:
            db.close()

    def ratings_of(self, reader_id: int) -> dict[str, dict]:
        """This reader's ratings: case id -> {score, comment}."""
        db = self._connect()
        try:
            rows = db.execute("SELECT case_id, score, comment FROM ratings WHERE reader_id = ?", (reader_id,)).fetchall()
        finally:
            db.close()
        return {c: {"score": s, "comment": m} for c, s, m in rows}


def read_ratings(study_dir: str | pathlib.Path) -> list[dict]:
    """Every rating with its reader's name (for the report, never for the page); [] when the
    study has no database yet."""
    path = pathlib.Path(study_dir) / DB_NAME
    if not path.is_file():
        return []
    db = sqlite3.connect(path, timeout=30.0)
    try:
        rows = db.execute("SELECT r.name, t.case_id, t.scale, t.score, t.comment, t.revisions FROM ratings t"
                          " JOIN readers r USING (reader_id) ORDER BY r.name, t.case_id").fetchall()
    finally:
        db.close()
    return [dict(zip(("reader", "case_id", "scale", "score", "comment", "revisions"), row)) for row in rows]
