"""Request history: one SQLite row per result, the result file and a thumbnail in an object store.

Layout in the store (``store_uri``: a local folder or ``s3://bucket/prefix``)::

    results/<id>.<ext>     the bytes the client received (image, or zip for a batch)
    thumbs/<id>.png        a small PNG preview (transparency kept)

Ids are 32 random hex characters (uuid4): they cannot be guessed, and anything else is
refused before it reaches a path. Files are written before their row, rows are deleted
before their files, so a row never points to a missing file. Retention: at most
``max_entries`` rows, at most ``max_mb`` of results and thumbnails (oldest first), and none
older than ``max_age_days``, enforced on every insert. A process that dies between deleting rows
and their files leaves files no row names; the next start removes those (:meth:`History.sweep_orphans`),
so the bytes the rows add up to are the bytes in the store.
All methods are blocking; the ingress calls them in a worker thread.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import cv2
import numpy as np

from matting_lib import io
from matting_lib.resize import downscale_long_side
from serve_app.config import HistorySettings

ID_RE = re.compile(r"^[0-9a-f]{32}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    model TEXT NOT NULL,
    brightness REAL,
    params TEXT NOT NULL,
    width INTEGER,
    height INTEGER,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    ext TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '{}',
    thumb_size INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS history_created ON history (created);
"""

COLUMNS = ("id", "created", "kind", "name", "model", "brightness", "params", "width", "height", "media_type", "size", "ext", "summary")
ORPHAN_AGE_S = 3600.0
"""A store file that no row names and is older than this is removed at start (a crash mid-eviction);
younger ones may belong to an insert in progress in another replica (files are written before rows)."""


@dataclass(frozen=True)
class Entry:
    """One history row. ``kind`` is 'image' or 'batch'; ``summary`` holds batch counts."""

    id: str
    created: float
    kind: str
    name: str
    model: str
    brightness: float | None
    params: dict[str, Any]
    width: int | None
    height: int | None
    media_type: str
    size: int
    ext: str
    summary: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        base = f"/v1/history/{self.id}"
        return {
            "id": self.id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
            "kind": self.kind,
            "name": self.name,
            "model": self.model,
            "brightness": self.brightness,
            "params": self.params,
            "width": self.width,
            "height": self.height,
            "media_type": self.media_type,
            "size": self.size,
            "summary": self.summary,
            "links": {"self": base, "result": f"{base}/result", "thumbnail": f"{base}/thumbnail"},
        }


def make_thumbnail(encoded: bytes, side: int) -> bytes | None:
    """A PNG of at most ``side`` px on the long side from an encoded image; None if undecodable."""
    arr = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        return None
    ok, buf = cv2.imencode(".png", downscale_long_side(arr, side))
    return buf.tobytes() if ok else None


class History:
    """The history store. See the module docstring for layout, ids and retention."""

    def __init__(self, settings: HistorySettings):
        self.settings = settings
        parent = os.path.dirname(settings.db_path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        io.makedirs(settings.store_uri)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            if "thumb_size" not in {r[1] for r in db.execute("PRAGMA table_info(history)")}:  # a database from before the byte cap
                db.execute("ALTER TABLE history ADD COLUMN thumb_size INTEGER NOT NULL DEFAULT 0")
        try:
            self.sweep_orphans()
        except Exception:  # noqa: BLE001 - a store that cannot be listed must not stop the replica
            pass

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection for one unit of work: committed on success, rolled back on error, always closed."""
        db = sqlite3.connect(self.settings.db_path, timeout=30)
        try:
            with db:
                yield db
        finally:
            db.close()

    def _result_uri(self, entry_id: str, ext: str) -> str:
        return io.join(self.settings.store_uri, "results", f"{entry_id}.{ext}")

    def _thumb_uri(self, entry_id: str) -> str:
        return io.join(self.settings.store_uri, "thumbs", f"{entry_id}.png")

    def ping(self) -> None:
        """Raise if the database cannot be read."""
        with self._connect() as db:
            db.execute("SELECT 1 FROM history LIMIT 1").fetchall()

    def add(
        self,
        *,
        kind: str,
        name: str,
        model: str,
        brightness: float | None,
        params: dict[str, Any],
        width: int | None,
        height: int | None,
        media_type: str,
        ext: str,
        body: bytes,
        thumbnail_source: bytes | None,
        summary: dict[str, Any] | None = None,
    ) -> Entry:
        """Store a result (and a thumbnail made from ``thumbnail_source``), then prune. Returns the entry."""
        entry = Entry(
            id=uuid.uuid4().hex, created=time.time(), kind=kind, name=name[:255], model=model,
            brightness=brightness, params=params, width=width, height=height, media_type=media_type,
            size=len(body), ext=ext, summary=summary or {},
        )
        io.write_bytes(self._result_uri(entry.id, ext), body)
        thumb = make_thumbnail(thumbnail_source, self.settings.thumbnail_side) if thumbnail_source else None
        if thumb is not None:
            io.write_bytes(self._thumb_uri(entry.id), thumb)
        row = (
            entry.id, entry.created, kind, entry.name, model, brightness, json.dumps(params), width, height,
            media_type, entry.size, ext, json.dumps(entry.summary), len(thumb or b""),
        )
        cols = (*COLUMNS, "thumb_size")
        with self._connect() as db:
            db.execute(f"INSERT INTO history ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", row)
        self.prune()
        return entry

    @staticmethod
    def _entry(row: tuple) -> Entry:
        d = dict(zip(COLUMNS, row))
        d["params"] = json.loads(d["params"])
        d["summary"] = json.loads(d["summary"])
        return Entry(**d)

    def list(self, limit: int, offset: int) -> tuple[list[Entry], int]:
        """Newest first: ``limit`` entries after skipping ``offset``, and the total count."""
        with self._connect() as db:
            total = db.execute("SELECT COUNT(*) FROM history").fetchone()[0]
            rows = db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM history ORDER BY created DESC, id LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
        return [self._entry(r) for r in rows], total

    def get(self, entry_id: str) -> Entry | None:
        if not ID_RE.fullmatch(entry_id):  # not .match: '$' would accept a trailing newline
            return None
        with self._connect() as db:
            row = db.execute(f"SELECT {', '.join(COLUMNS)} FROM history WHERE id = ?", (entry_id,)).fetchone()
        return self._entry(row) if row else None

    def read_result(self, entry: Entry) -> bytes:
        return io.read_bytes(self._result_uri(entry.id, entry.ext))

    def read_thumbnail(self, entry: Entry) -> bytes | None:
        try:
            return io.read_bytes(self._thumb_uri(entry.id))
        except FileNotFoundError:
            return None

    def delete(self, entry_id: str) -> bool:
        """Delete an entry and its files; False if there was none."""
        entry = self.get(entry_id)
        if entry is None:
            return False
        with self._connect() as db:
            db.execute("DELETE FROM history WHERE id = ?", (entry_id,))
        self._remove_files([entry])
        return True

    def usage(self) -> dict[str, Any]:
        """The store's size as its rows add up: entries, bytes (results + thumbnails), the largest
        entry's bytes (the most the byte cap may be exceeded by, :meth:`prune`) and the caps."""
        with self._connect() as db:
            n, nbytes, largest = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size + thumb_size), 0), COALESCE(MAX(size + thumb_size), 0) FROM history"
            ).fetchone()
        return {"entries": n, "bytes": nbytes, "largest_entry_bytes": largest, "max_entries": self.settings.max_entries,
                "max_bytes": self.settings.max_bytes, "max_age_days": self.settings.max_age_days}

    def prune(self) -> int:
        """Apply retention (count, bytes and age, oldest first); returns how many entries were deleted.

        The newest entry is always kept, so the store exceeds ``max_mb`` by at most that one entry.
        Rows go in one transaction, then their files (a crash in between leaves only orphan files,
        which :meth:`sweep_orphans` removes at the next start)."""
        cutoff = time.time() - self.settings.max_age_days * 86400
        cols = ", ".join(f"h.{c}" for c in COLUMNS)
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {cols} FROM (SELECT id, ROW_NUMBER() OVER w AS n, SUM(size + thumb_size) OVER w AS newer "
                "FROM history WINDOW w AS (ORDER BY created DESC, id)) r JOIN history h ON h.id = r.id "
                "WHERE r.n > 1 AND (h.created < ? OR r.n > ? OR r.newer > ?)",
                (cutoff, self.settings.max_entries, self.settings.max_bytes),
            ).fetchall()
            old = [self._entry(r) for r in rows]
            db.executemany("DELETE FROM history WHERE id = ?", [(e.id,) for e in old])
        self._remove_files(old)
        return len(old)

    def _remove_files(self, entries: list[Entry]) -> None:
        for e in entries:
            for uri in (self._result_uri(e.id, e.ext), self._thumb_uri(e.id)):
                fs, path = io.filesystem(uri)
                try:
                    fs.rm_file(path)
                except FileNotFoundError:
                    pass

    def sweep_orphans(self, min_age_s: float = ORPHAN_AGE_S) -> int:
        """Remove store files older than ``min_age_s`` that no row names; returns how many."""
        with self._connect() as db:
            ids = {r[0] for r in db.execute("SELECT id FROM history")}
        removed = 0
        now = time.time()
        for folder in ("results", "thumbs"):
            fs, path = io.filesystem(io.join(self.settings.store_uri, folder))
            try:
                listing = fs.ls(path, detail=True)
            except FileNotFoundError:
                continue
            for info in listing:
                stem = os.path.basename(str(info["name"])).split(".", 1)[0]
                if not ID_RE.fullmatch(stem) or stem in ids:
                    continue
                modified = info.get("mtime") or info.get("LastModified") or info.get("created")
                stamp = modified.timestamp() if hasattr(modified, "timestamp") else float(modified or now)
                if now - stamp >= min_age_s:
                    try:
                        fs.rm_file(info["name"])
                        removed += 1
                    except FileNotFoundError:
                        pass
        return removed
