"""`EnrollStore` on SQL: SQLite (stdlib, one file next to the CA, WAL) or PostgreSQL (psycopg 3).

One implementation for both: the SQL is the portable subset (upsert, RETURNING) and a dialect
supplies connections, placeholders and column types. Each thread keeps its own connection
(SQLite connections are not shared across threads; PostgreSQL's are cheap to keep). The schema
is versioned: `MIGRATIONS` run once, in order, inside one transaction that also holds a lock, so
two servers starting together on one PostgreSQL do not both migrate. docs/enrollment-server.md
says why psycopg 3.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterator

from .attest_errors import EnrollError
from .state import Account, AttestSession, CertRecord, EnrollStore, Order

# Each entry: the statements that take the schema from the previous version to this one.
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE nonces (seq {serial}, value TEXT NOT NULL UNIQUE, expires DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE attest_sessions (ek TEXT PRIMARY KEY, secret_hash {blob} NOT NULL UNIQUE, ak_public {blob} NOT NULL,"
        " details TEXT NOT NULL, nonce {blob} NOT NULL, expires DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE accounts (id TEXT PRIMARY KEY, thumbprint TEXT NOT NULL UNIQUE, jwk TEXT NOT NULL,"
        " status TEXT NOT NULL, contact TEXT NOT NULL, created DOUBLE PRECISION NOT NULL,"
        " last_used DOUBLE PRECISION NOT NULL, client TEXT NOT NULL)",
        "CREATE INDEX accounts_last_used ON accounts (last_used)",
        "CREATE TABLE orders (id TEXT PRIMARY KEY, account TEXT NOT NULL, identifier TEXT NOT NULL,"
        " expires DOUBLE PRECISION NOT NULL, authz_id TEXT NOT NULL UNIQUE, token TEXT NOT NULL, status TEXT NOT NULL,"
        " authz_status TEXT NOT NULL, error TEXT, attested_spki {blob}, ek TEXT NOT NULL, cert_serial TEXT,"
        " created DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX orders_account ON orders (account, created)",
        "CREATE INDEX orders_expires ON orders (expires)",
        "CREATE TABLE certificates (serial TEXT PRIMARY KEY, order_id TEXT NOT NULL, account TEXT NOT NULL,"
        " identifier TEXT NOT NULL, ek TEXT NOT NULL, spki_sha256 TEXT NOT NULL, not_before DOUBLE PRECISION NOT NULL,"
        " not_after DOUBLE PRECISION NOT NULL, pem {blob} NOT NULL, issued_at DOUBLE PRECISION NOT NULL,"
        " revoked_at DOUBLE PRECISION, reason TEXT)",
        "CREATE INDEX certificates_key ON certificates (spki_sha256)",
        "CREATE INDEX certificates_ek ON certificates (ek)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)
_ORDER_COLUMNS = {f.name for f in fields(Order)} - {"id"}
_ACCOUNT_COLUMNS = {"status", "contact", "last_used"}


class _Dialect(ABC):
    """What differs between SQLite and PostgreSQL: connecting, placeholders, types, locking, errors."""

    name = ""
    types: dict[str, str] = {}
    retry_errors: tuple[type[BaseException], ...] = ()
    integrity_errors: tuple[type[BaseException], ...] = ()

    @abstractmethod
    def connect(self) -> Any:
        """A new DB-API connection to this database."""

    def sql(self, text: str) -> str:
        return text

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN")

    @abstractmethod
    def lock_schema(self, conn: Any) -> None:
        """Hold a lock for the rest of the transaction so only one process migrates."""

    @abstractmethod
    def durable(self, conn: Any) -> None:
        """Inside a transaction: make its commit wait for the disk (certificates, revocations)."""


class _Sqlite(_Dialect):
    name = "sqlite"
    types = {"serial": "INTEGER PRIMARY KEY", "blob": "BLOB"}
    retry_errors = ()
    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.parent.is_dir():
            raise EnrollError(f"--db sqlite:{path}: directory {path.parent} does not exist")
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)  # accounts, sessions: not for other users
            os.close(fd)

    def connect(self) -> Any:
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; an OS crash may lose the last commits
            conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.DatabaseError as e:
            raise EnrollError(f"--db sqlite:{self.path}: not a usable SQLite database ({e})") from None
        return conn

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock upgrading a read later

    def lock_schema(self, conn: Any) -> None:
        pass  # BEGIN IMMEDIATE already excludes every other writer

    def durable(self, conn: Any) -> None:
        pass  # a connection-wide setting here (PRAGMA synchronous, set when connecting), not per transaction


class _Postgres(_Dialect):
    name = "postgresql"
    types = {"serial": "BIGSERIAL PRIMARY KEY", "blob": "BYTEA"}

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as e:  # psycopg's pure-Python build needs libpq (Debian: libpq5)
            raise EnrollError(f"--db postgresql: the psycopg driver cannot load ({e}); install libpq5") from None
        self.psycopg = psycopg
        self.url = url
        self.retry_errors = (psycopg.OperationalError, psycopg.InterfaceError)
        self.integrity_errors = (psycopg.IntegrityError,)

    def connect(self) -> Any:
        try:
            conn = self.psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            # Nonces, sessions and order steps: the durability of SQLite's default (WAL, synchronous=NORMAL) —
            # a crash of the database's machine may lose the last fraction of a second, never corrupts.
            # Certificates and revocations wait for the disk (`durable`). Halves an enrollment's time here.
            conn.execute("SET synchronous_commit TO off")
            return conn
        except self.psycopg.Error as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EnrollError(f"--db {_shown(self.url)}: cannot connect to PostgreSQL ({reason})") from None

    def durable(self, conn: Any) -> None:
        conn.execute("SET LOCAL synchronous_commit TO on")

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def lock_schema(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(7470236)")  # any fixed key: "tpmtls migrations"


def _shown(url: str) -> str:
    """A database URL without its password, for messages."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def parse_db_url(url: str, default_dir: Path) -> _Dialect:
    """`sqlite:PATH` (relative to the CA directory unless absolute) or `postgresql://…`."""
    if url.startswith("sqlite:"):
        raw = url[len("sqlite:"):]
        if raw.startswith("//"):
            raw = raw[2:]  # sqlite:///abs/path, as SQLAlchemy spells it
        if not raw:
            raise EnrollError("--db sqlite:PATH: name the database file")
        path = Path(raw)
        return _Sqlite(path if path.is_absolute() else default_dir / path)
    if url.startswith(("postgresql://", "postgres://")):
        return _Postgres(url)
    raise EnrollError(f"--db {_shown(url)!r}: write sqlite:PATH or postgresql://USER@HOST/DB")


class SqlStore(EnrollStore):
    """The enrollment state in one SQLite file or one PostgreSQL database."""

    def __init__(self, dialect: _Dialect, url: str) -> None:
        self.d = dialect
        self.url = _shown(url)
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        self._migrate()

    @classmethod
    def open(cls, url: str, default_dir: Path) -> "SqlStore":
        return cls(parse_db_url(url, default_dir), url)

    # -- plumbing -------------------------------------------------------------------------
    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.d.connect()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is gone either way
                pass

    def _run(self, fn: Any) -> Any:
        """Run `fn(conn)`; a lost PostgreSQL connection (server restart) is reopened and `fn` retried once."""
        try:
            return fn(self._conn())
        except self.d.retry_errors:
            self._drop()
            try:
                return fn(self._conn())
            except self.d.retry_errors as e:
                self._drop()
                raise EnrollError(f"{self.url}: database unavailable ({str(e).strip()[:160] or type(e).__name__})") from None

    def _exec(self, conn: Any, sql: str, args: tuple[Any, ...] = ()) -> Any:
        return conn.execute(self.d.sql(sql), args)

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        # fetchall, not fetchone: SQLite applies (and unlocks) a DELETE … RETURNING only once stepped to its end
        return self._run(lambda c: next(iter(self._exec(c, sql, args).fetchall()), None))

    def _all_rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        return list(self._run(lambda c: self._exec(c, sql, args).fetchall()))

    def _count(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        return int(self._run(lambda c: self._exec(c, sql, args).rowcount))

    @contextmanager
    def _tx(self, conn: Any) -> Iterator[Any]:
        self.d.begin(conn)
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _migrate(self) -> None:
        def step(conn: Any) -> None:
            self._exec(conn, "CREATE TABLE IF NOT EXISTS tpmtls_schema (version INTEGER NOT NULL)")
            with self._tx(conn):
                self.d.lock_schema(conn)
                row = self._exec(conn, "SELECT version FROM tpmtls_schema").fetchone()
                current = int(row[0]) if row else 0
                if current > SCHEMA_VERSION:
                    raise EnrollError(f"{self.url}: database schema version {current} is newer than this tpmtls knows "
                                      f"({SCHEMA_VERSION}); run a newer tpmtls against it")
                for statements in MIGRATIONS[current:]:
                    for statement in statements:
                        self._exec(conn, statement.format(**self.d.types))
                if row is None:
                    self._exec(conn, "INSERT INTO tpmtls_schema (version) VALUES (?)", (SCHEMA_VERSION,))
                elif current != SCHEMA_VERSION:
                    self._exec(conn, "UPDATE tpmtls_schema SET version = ?", (SCHEMA_VERSION,))

        self._run(step)

    def schema_version(self) -> int:
        row = self._one("SELECT version FROM tpmtls_schema")
        return int(row[0]) if row else 0

    # -- nonces ---------------------------------------------------------------------------
    def add_nonce(self, value: str, expires: float, cap: int) -> None:
        def step(conn: Any) -> None:
            seq = self._exec(conn, "INSERT INTO nonces (value, expires) VALUES (?, ?) RETURNING seq",
                             (value, expires)).fetchall()[0][0]
            if seq > cap:  # sequence numbers only grow: everything `cap` behind this one goes (an index range)
                self._exec(conn, "DELETE FROM nonces WHERE seq <= ?", (seq - cap,))

        self._run(step)

    def take_nonce(self, value: str) -> float | None:
        row = self._one("DELETE FROM nonces WHERE value = ? RETURNING expires", (value,))
        return float(row[0]) if row else None

    # -- attestation sessions -------------------------------------------------------------
    def put_session(self, session: AttestSession) -> None:
        self._run(lambda c: self._exec(
            c, "INSERT INTO attest_sessions (ek, secret_hash, ak_public, details, nonce, expires) VALUES (?, ?, ?, ?, ?, ?)"
               " ON CONFLICT (ek) DO UPDATE SET secret_hash = excluded.secret_hash, ak_public = excluded.ak_public,"
               " details = excluded.details, nonce = excluded.nonce, expires = excluded.expires",
            (session.ek, session.secret_hash, session.ak_public, json.dumps(session.details), session.nonce,
             session.expires)))

    def take_session(self, secret_hash: bytes) -> AttestSession | None:
        row = self._one("DELETE FROM attest_sessions WHERE secret_hash = ? "
                        "RETURNING ek, ak_public, details, nonce, expires", (secret_hash,))
        if row is None:
            return None
        return AttestSession(secret_hash, row[0], bytes(row[1]), json.loads(row[2]), bytes(row[3]), float(row[4]))

    # -- accounts -------------------------------------------------------------------------
    _ACCOUNT = "SELECT id, thumbprint, jwk, status, contact, created, last_used, client FROM accounts"

    @staticmethod
    def _account(row: Any) -> Account | None:
        if row is None:
            return None
        return Account(row[0], row[1], row[2], row[3], json.loads(row[4]), float(row[5]), float(row[6]), row[7])

    def add_account(self, account: Account) -> tuple[Account, bool]:
        inserted = self._count(
            "INSERT INTO accounts (id, thumbprint, jwk, status, contact, created, last_used, client) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (thumbprint) DO NOTHING",
            (account.id, account.thumbprint, account.jwk, account.status, json.dumps(account.contact), account.created,
             account.last_used, account.client))
        if inserted:
            return account, True
        existing = self.account_by_thumbprint(account.thumbprint)
        if existing is None:  # purged between the two statements: try once more
            return self.add_account(account)
        return existing, False

    def account(self, account_id: str) -> Account | None:
        return self._account(self._one(self._ACCOUNT + " WHERE id = ?", (account_id,)))

    def account_by_thumbprint(self, thumbprint: str) -> Account | None:
        return self._account(self._one(self._ACCOUNT + " WHERE thumbprint = ?", (thumbprint,)))

    def update_account(self, account_id: str, **changes: Any) -> None:
        if not changes or set(changes) - _ACCOUNT_COLUMNS:
            raise ValueError(f"update_account: unknown columns {set(changes) - _ACCOUNT_COLUMNS}")
        if "contact" in changes:
            changes["contact"] = json.dumps(changes["contact"])
        cols = sorted(changes)
        self._count(f"UPDATE accounts SET {', '.join(c + ' = ?' for c in cols)} WHERE id = ?",  # noqa: S608 - whitelisted
                    (*(changes[c] for c in cols), account_id))

    # -- orders ---------------------------------------------------------------------------
    _ORDER = ("SELECT id, account, identifier, expires, authz_id, token, status, authz_status, error, attested_spki, ek,"
              " cert_serial, created FROM orders")

    @staticmethod
    def _order(row: Any) -> Order | None:
        if row is None:
            return None
        return Order(row[0], row[1], row[2], float(row[3]), row[4], row[5], row[6], row[7],
                     json.loads(row[8]) if row[8] else None, bytes(row[9]) if row[9] is not None else None, row[10],
                     row[11], float(row[12]))

    def add_order(self, order: Order) -> None:
        self._count("INSERT INTO orders (id, account, identifier, expires, authz_id, token, status, authz_status, error,"
                    " attested_spki, ek, cert_serial, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (order.id, order.account, order.identifier, order.expires, order.authz_id, order.token, order.status,
                     order.authz_status, json.dumps(order.error) if order.error else None, order.attested_spki, order.ek,
                     order.cert_serial, order.created))

    def order(self, order_id: str) -> Order | None:
        return self._order(self._one(self._ORDER + " WHERE id = ?", (order_id,)))

    def order_by_authz(self, authz_id: str) -> Order | None:
        return self._order(self._one(self._ORDER + " WHERE authz_id = ?", (authz_id,)))

    def orders_of(self, account_id: str, limit: int) -> list[str]:
        rows = self._all_rows("SELECT id FROM orders WHERE account = ? ORDER BY created DESC LIMIT ?", (account_id, limit))
        return [r[0] for r in rows]

    def open_orders(self, account_id: str, now: float) -> int:
        row = self._one("SELECT COUNT(*) FROM orders WHERE account = ? AND expires >= ? "
                        "AND status IN ('pending', 'ready', 'processing')", (account_id, now))
        return int(row[0])

    def update_order(self, order_id: str, expect: dict[str, Any], **changes: Any) -> bool:
        bad = (set(changes) | set(expect)) - _ORDER_COLUMNS
        if not changes or bad:
            raise ValueError(f"update_order: unknown columns {bad}")
        if "error" in changes and changes["error"] is not None:
            changes["error"] = json.dumps(changes["error"])
        sets, wheres = sorted(changes), sorted(expect)
        sql = (f"UPDATE orders SET {', '.join(c + ' = ?' for c in sets)} WHERE id = ?"  # noqa: S608 - whitelisted names
               + "".join(f" AND {c} = ?" for c in wheres))
        return self._count(sql, (*(changes[c] for c in sets), order_id, *(expect[c] for c in wheres))) == 1

    # -- certificates ---------------------------------------------------------------------
    _CERT = ("SELECT serial, order_id, account, identifier, ek, spki_sha256, not_before, not_after, pem, issued_at,"
             " revoked_at, reason FROM certificates")

    @staticmethod
    def _cert(row: Any) -> CertRecord | None:
        if row is None:
            return None
        return CertRecord(row[0], row[1], row[2], row[3], row[4], row[5], float(row[6]), float(row[7]), bytes(row[8]),
                          float(row[9]), float(row[10]) if row[10] is not None else None, row[11])

    def _durably(self, sql: str, args: tuple[Any, ...]) -> int:
        def step(conn: Any) -> int:
            with self._tx(conn):
                self.d.durable(conn)
                return int(self._exec(conn, sql, args).rowcount)

        return int(self._run(step))

    def add_certificate(self, record: CertRecord) -> None:
        self._durably("INSERT INTO certificates (serial, order_id, account, identifier, ek, spki_sha256, not_before,"
                      " not_after, pem, issued_at, revoked_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (record.serial, record.order_id, record.account, record.identifier, record.ek, record.spki_sha256,
                       record.not_before, record.not_after, record.pem, record.issued_at, record.revoked_at, record.reason))

    def certificate(self, serial: str) -> CertRecord | None:
        return self._cert(self._one(self._CERT + " WHERE serial = ?", (serial,)))

    def revoked_for_key(self, spki_sha256: str) -> CertRecord | None:
        return self._cert(self._one(self._CERT + " WHERE spki_sha256 = ? AND revoked_at IS NOT NULL LIMIT 1",
                                    (spki_sha256,)))

    def revoke(self, serial: str, reason: str, when: float) -> bool:
        return self._durably("UPDATE certificates SET revoked_at = ?, reason = ? WHERE serial = ? AND revoked_at IS NULL",
                             (when, reason, serial)) == 1 or self.certificate(serial) is not None

    # -- housekeeping ---------------------------------------------------------------------
    def purge(self, now: float, account_idle: float, keep_orders: float) -> dict[str, int]:
        out = {
            "nonces": self._count("DELETE FROM nonces WHERE expires < ?", (now,)),
            "sessions": self._count("DELETE FROM attest_sessions WHERE expires < ?", (now,)),
            "orders": self._count("DELETE FROM orders WHERE expires < ?", (now - keep_orders,)),
        }
        # An account idle that long with no order left is forgotten; the client simply registers again.
        out["accounts"] = self._count(
            "DELETE FROM accounts WHERE last_used < ? AND NOT EXISTS (SELECT 1 FROM orders WHERE orders.account = accounts.id)",
            (now - account_idle,))
        return out

    def counts(self) -> dict[str, int]:
        return {t: int(self._one(f"SELECT COUNT(*) FROM {t}")[0])  # noqa: S608 - fixed table names
                for t in ("nonces", "attest_sessions", "accounts", "orders", "certificates")}

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing at shutdown: nothing left to do with an error
                pass
        self._local = threading.local()


def open_store(url: str | None, ca_dir: str | Path) -> SqlStore:
    """The store `--db` names; by default `sqlite:enroll.db` in the CA directory."""
    return SqlStore.open(url or "sqlite:enroll.db", Path(ca_dir))


__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SqlStore", "open_store", "parse_db_url"]
