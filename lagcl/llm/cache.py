"""The response cache under every backend: one SQLite file in WAL mode.

Why SQLite/WAL: several processes (a Prefect flow with parallel tasks, a resumed run next to a stuck
one) may write the same cache; WAL lets readers and one writer proceed together and `busy_timeout`
makes concurrent writers wait instead of failing. Every answer is committed the moment it arrives, so
a crash loses at most the requests in flight, and a rerun re-sends only requests that never got an
answer. Failed requests are never stored (they are retried on the next run).

The same file records submitted batches (Anthropic Message Batches, OpenAI Batch API; batch id -> the cache keys it carries),
so a restarted run polls a batch it already paid for instead of submitting it again.

And it keeps the scores (eq. 2-3) of single (user profile, item profile) pairs read from validated replies, keyed by
a digest of what the model saw for the pair (`LLMEngine.score`, `llm.reuse_pair_scores`): a score request that
changed in one item then re-asks that item only.

And a spend ledger: what each stage folder's answers cost, over every attempt (`put(..., ledger=)` adds an answer's
cost in the same transaction that stores it, so a crash never loses a paid answer from the count; replies deleted
later as unusable stay counted: they were paid). The run budget reads it (tasks/budget.py, docs/design.md 16).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable

from lagcl.llm.types import Completion

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    finish_reason TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    status TEXT NOT NULL,          -- submitted | done
    submitted_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_requests (
    key TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    PRIMARY KEY (key, batch_id)
);
CREATE INDEX IF NOT EXISTS batch_requests_batch ON batch_requests (batch_id);
CREATE TABLE IF NOT EXISTS spend (
    ledger TEXT PRIMARY KEY,       -- a stage folder: <dataset>/<stage>/<fingerprint>
    usd REAL NOT NULL,             -- what its answers cost, every attempt
    answers INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pair_scores (
    key TEXT PRIMARY KEY,          -- digest of model, prompt, polarity, the user part and the item part
    score REAL NOT NULL,
    created_at REAL NOT NULL
);
"""


class ResponseCache:
    """Key -> (text, usage, timestamp). Thread-safe within a process, WAL-safe across processes."""

    def __init__(self, directory: str | Path, filename: str = "responses.sqlite") -> None:
        self.path = Path(directory) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: we issue explicit short transactions; timeout = busy wait for other writers
        self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=60000")
        with self._lock:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # responses -------------------------------------------------------------------------------
    def get_many(self, keys: Iterable[str]) -> dict[str, tuple[Completion, float]]:
        """Cached completions (with their recorded cost) for the keys that have one."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, tuple[Completion, float]] = {}
        with self._lock:
            for start in range(0, len(keys), 500):  # SQLite limits bound parameters per statement
                chunk = keys[start:start + 500]
                rows = self._db.execute(
                    f"SELECT key, text, input_tokens, output_tokens, finish_reason, cost_usd FROM responses "
                    f"WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
                for key, text, tin, tout, finish, cost in rows:
                    out[key] = (Completion(text, tin, tout, finish), cost)
        return out

    def put(self, key: str, backend: str, model: str, completion: Completion, cost_usd: float,
            ledger: str | None = None) -> None:
        """Store an answer; with `ledger`, add its cost to that ledger entry in the same transaction."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, backend, model, completion.text, completion.input_tokens, completion.output_tokens,
                     cost_usd, completion.finish_reason, now))
                if ledger is not None and cost_usd:
                    self._db.execute(
                        "INSERT INTO spend VALUES (?, ?, 1, ?) ON CONFLICT (ledger) DO UPDATE SET "
                        "usd = usd + excluded.usd, answers = answers + 1, updated_at = excluded.updated_at",
                        (ledger, cost_usd, now))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def spent(self, ledgers: Iterable[str]) -> dict[str, float]:
        """What the answers recorded under each ledger entry cost (entries never written are left out)."""
        ledgers = list(dict.fromkeys(ledgers))
        if not ledgers:
            return {}
        with self._lock:
            rows = self._db.execute(f"SELECT ledger, usd FROM spend WHERE ledger IN ({','.join('?' * len(ledgers))})",
                                    ledgers).fetchall()
        return {ledger: float(usd) for ledger, usd in rows}

    def delete(self, keys: Iterable[str]) -> None:
        """Forget answers (replies that proved unusable), so the next run asks for them again."""
        keys = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                self._db.execute(f"DELETE FROM responses WHERE key IN ({','.join('?' * len(chunk))})", chunk)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def total_cost(self) -> float:
        """Everything ever paid for through this cache (all runs): for stage manifests."""
        with self._lock:
            return float(self._db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM responses").fetchone()[0])

    # pair scores -----------------------------------------------------------------------------
    def pair_scores(self, keys: Iterable[str]) -> dict[str, float]:
        """The recorded scores of the pairs that have one."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, float] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                out.update(self._db.execute(f"SELECT key, score FROM pair_scores WHERE key IN "
                                            f"({','.join('?' * len(chunk))})", chunk).fetchall())
        return out

    def put_pair_scores(self, scores: dict[str, float]) -> None:
        """Record validated pair scores, all in one transaction."""
        if not scores:
            return
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO pair_scores VALUES (?, ?, ?)",
                                     [(k, float(v), now) for k, v in scores.items()])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # batches ---------------------------------------------------------------------------------
    def record_batch(self, batch_id: str, backend: str, keys: Iterable[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR REPLACE INTO batches VALUES (?, ?, 'submitted', ?)",
                                 (batch_id, backend, time.time()))
                self._db.executemany("INSERT OR IGNORE INTO batch_requests VALUES (?, ?)",
                                     [(k, batch_id) for k in keys])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def pending_batches(self, backend: str, keys: Iterable[str]) -> dict[str, list[str]]:
        """Submitted, not yet collected batches that carry any of `keys`: batch id -> those keys."""
        wanted = set(keys)
        out: dict[str, list[str]] = {}
        with self._lock:
            rows = self._db.execute(
                "SELECT r.batch_id, r.key FROM batch_requests r JOIN batches b ON b.batch_id = r.batch_id "
                "WHERE b.status = 'submitted' AND b.backend = ?", (backend,)).fetchall()
        for batch_id, key in rows:
            if key in wanted:
                out.setdefault(batch_id, []).append(key)
        return out

    def finish_batch(self, batch_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE batches SET status = 'done' WHERE batch_id = ?", (batch_id,))
