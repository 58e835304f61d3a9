"""Who may talk to the lane service: stations (API keys), supervisors and admins (API keys, passwords,
browser sessions).

What is stored, and why it is enough:
- API keys are 256 random bits (`secrets.token_urlsafe(32)`) with a readable prefix (`xs_st_` for
  stations, `xs_us_` for users, so a leaked key is recognisable in logs and by secret scanners). Only their
  sha256 is stored: with that much entropy there is no dictionary to try, so a slow hash would buy
  nothing, and a fast one lets the key be found by its hash through a unique index.
- Passwords are low-entropy, so they get argon2id (argon2-cffi's defaults, RFC 9106 low-memory profile),
  rehashed on login when the parameters are raised.
- Session tokens are random like keys and stored as sha256; they expire.
Station and user names are separate namespaces: a station "lane-3" and a user "lane-3" are two principals.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from edge.db import AuthSession, PrincipalRow
from edge.store import Store

__all__ = ["MIN_PASSWORD_LENGTH", "STATION_KEY_PREFIX", "USER_KEY_PREFIX", "Auth", "Principal", "Role"]

Role = Literal["station", "supervisor", "admin"]
PrincipalKind = Literal["station", "user"]

STATION_KEY_PREFIX = "xs_st_"
USER_KEY_PREFIX = "xs_us_"
#: NIST SP 800-63B's floor for user-chosen passwords.
MIN_PASSWORD_LENGTH = 8
# Longest accepted password: argon2 copes with any length, but a megabyte "password" is a cheap DoS.
_MAX_PASSWORD_LENGTH = 1024
_USER_ROLES = ("supervisor", "admin")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    role: Role
    kind: PrincipalKind


def _sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


_KEY_LOOKUP = select(PrincipalRow.name, PrincipalRow.role, PrincipalRow.kind, PrincipalRow.disabled,
                     PrincipalRow.key_hash).where(PrincipalRow.key_hash == bindparam("key_hash"))


def _principal(row: Any) -> Principal:
    """A principal from a `PrincipalRow` or a row with its name, role and kind."""
    return Principal(name=row.name, role=row.role, kind=row.kind)  # type: ignore[arg-type]


def _check_name(name: str) -> None:
    # NUL: PostgreSQL text cannot hold it (psycopg refuses the query), so no principal may be named with it.
    # Control characters (a newline, a tab, an escape): `xscreen admin list` prints a line per principal,
    # and no login form can type them.
    if (not isinstance(name, str) or not name.strip() or len(name) > 128 or name != name.strip()
            or any(unicodedata.category(c) == "Cc" for c in name)):
        raise ValueError(f"bad name {name!r}: 1-128 characters, no leading or trailing spaces, no control characters")


def _check_password(password: str) -> None:
    if not isinstance(password, str) or not MIN_PASSWORD_LENGTH <= len(password) <= _MAX_PASSWORD_LENGTH:
        raise ValueError(f"password must be {MIN_PASSWORD_LENGTH} to {_MAX_PASSWORD_LENGTH} characters")


class Auth:
    """Principals, keys, passwords and sessions, stored through `store` (which must be migrated)."""

    def __init__(self, store: Store, *, password_hasher: PasswordHasher | None = None) -> None:
        """`password_hasher` defaults to argon2-cffi's argon2id defaults (about 0.5 s and 64 MiB per hash
        on a lane box); tests pass a cheaper one."""
        self.store = store
        self._hasher = password_hasher if password_hasher is not None else PasswordHasher()
        self._dummy_hash_value: str | None = None

    @property
    def _dummy_hash(self) -> str:
        # Verified against when the user does not exist, so that "no such user" takes as long as
        # "wrong password" and names cannot be probed by timing. Made by `prepare_logins` (the service does at
        # start: made on a first login, it would make that login's "no such user" cost a hash more), else on
        # first use: hashing costs as much as a login, and most Auth objects (CLI commands) never need it.
        if self._dummy_hash_value is None:
            self._dummy_hash_value = self._hasher.hash(secrets.token_urlsafe(16))
        return self._dummy_hash_value

    def prepare_logins(self) -> None:
        """Do now the one-off work of a first login (the unknown-name hash), so no login costs more than another."""
        _ = self._dummy_hash

    # -- principals --------------------------------------------------------------------------------------

    def _add(self, *, kind: PrincipalKind, name: str, role: Role, password: str | None) -> str:
        _check_name(name)
        prefix = STATION_KEY_PREFIX if kind == "station" else USER_KEY_PREFIX
        key = prefix + secrets.token_urlsafe(32)
        password_hash = None
        if password is not None:
            _check_password(password)
            password_hash = self._hasher.hash(password)
        try:
            with self.store.transaction(write=True) as session:
                session.add(PrincipalRow(kind=kind, name=name, role=role, key_hash=_sha256_hex(key),
                                         password_hash=password_hash, disabled=False, created_at=self.store.now()))
        except IntegrityError as exc:  # (kind, name) taken; a key-hash collision would need 2**128 keys
            raise ValueError(f"{kind} {name!r} already exists") from exc
        return key

    def add_station(self, name: str) -> str:
        """Register a station; return its new API key (shown once: only its hash is stored).
        ValueError if a station of that name exists."""
        return self._add(kind="station", name=name, role="station", password=None)

    def add_user(self, name: str, role: Role, password: str | None = None) -> str:
        """Register a supervisor or admin; return a new API key for Bearer use. With `password`, the user
        can also log in to the review UI. ValueError if the user exists or the role is not a user role."""
        if role not in _USER_ROLES:
            raise ValueError(f"user role must be one of {_USER_ROLES}, got {role!r}")
        return self._add(kind="user", name=name, role=role, password=password)

    def _row(self, session: Session, name: str, kind: PrincipalKind) -> PrincipalRow:
        row = session.execute(
            select(PrincipalRow).where(PrincipalRow.kind == kind, PrincipalRow.name == name)
        ).scalar_one_or_none()
        if row is None:
            raise KeyError(f"no {kind} {name!r}")
        return row

    def set_password(self, name: str, password: str) -> None:
        """Set (or replace) a user's password and end their sessions: a password is reset because it may
        be known to someone else, who may be logged in with it. KeyError if there is no such user."""
        _check_password(password)
        password_hash = self._hasher.hash(password)
        with self.store.transaction(write=True) as session:
            row = self._row(session, name, "user")
            row.password_hash = password_hash
            session.execute(delete(AuthSession).where(AuthSession.principal_id == row.id))

    def rotate_key(self, name: str, *, kind: PrincipalKind) -> str:
        """Replace a principal's API key (the old one stops working at once); return the new key."""
        prefix = STATION_KEY_PREFIX if kind == "station" else USER_KEY_PREFIX
        key = prefix + secrets.token_urlsafe(32)
        with self.store.transaction(write=True) as session:
            self._row(session, name, kind).key_hash = _sha256_hex(key)
        return key

    def set_disabled(self, name: str, *, kind: PrincipalKind, disabled: bool = True) -> None:
        """Disable (or re-enable) a principal: its key, password and sessions stop working, and its
        sessions are ended."""
        with self.store.transaction(write=True) as session:
            row = self._row(session, name, kind)
            row.disabled = disabled
            if disabled:
                session.execute(delete(AuthSession).where(AuthSession.principal_id == row.id))

    def principals(self) -> list[tuple[Principal, bool]]:
        """Every principal with its disabled flag, stations first, by name."""
        with self.store.transaction(write=False) as session:
            rows = session.execute(select(PrincipalRow).order_by(PrincipalRow.kind, PrincipalRow.name)).scalars()
            return [(_principal(row), row.disabled) for row in rows]

    # -- authentication ----------------------------------------------------------------------------------

    def principal_for_key(self, key: str) -> Principal | None:
        """The enabled principal whose API key this is, else None."""
        if not isinstance(key, str) or not key.startswith((STATION_KEY_PREFIX, USER_KEY_PREFIX)) or len(key) > 256:
            return None
        if not key.isascii():  # keys are ASCII (token_urlsafe); a JSON key message may hold a lone surrogate
            return None
        key_hash = _sha256_hex(key)
        # Core columns, not an ORM object: every request with a key runs this.
        with self.store.engine.connect() as connection:
            row = connection.execute(_KEY_LOOKUP, {"key_hash": key_hash}).one_or_none()
        # The index lookup already matched the hash; the constant-time compare keeps the final decision
        # free of early-exit timing whatever the database's string comparison does.
        if row is None or row.disabled or not hmac.compare_digest(row.key_hash, key_hash):
            return None
        return _principal(row)

    def _checked_password(self, name: str, password: str) -> tuple[Principal, str] | None:
        """(the enabled user `name`, the stored hash `password` was verified against), else None; the same
        argon2 work either way."""
        if not isinstance(password, str) or len(password) > _MAX_PASSWORD_LENGTH:
            return None
        row = None
        # A name with NUL (refused by _check_name, so nobody's) would make PostgreSQL refuse the query: it is
        # looked up as no one, and verified against the dummy hash like any unknown name.
        if isinstance(name, str) and "\x00" not in name:
            with self.store.transaction(write=False) as session:
                row = session.execute(
                    select(PrincipalRow).where(PrincipalRow.kind == "user", PrincipalRow.name == name)
                ).scalar_one_or_none()
        stored = row.password_hash if row is not None and row.password_hash else None
        try:
            self._hasher.verify(stored or self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        if stored is None or row is None or row.disabled:
            return None
        return _principal(row), stored

    def _unchanged_user(self, session: Session, name: str, verified_hash: str) -> PrincipalRow | None:
        """The user's row, locked for this transaction, if it is enabled and still holds the password hash a
        login verified; None if a reset, a disabling or a removal came in between (the login is refused:
        its password may be the leaked one the reset was for)."""
        row = session.execute(
            select(PrincipalRow).where(PrincipalRow.kind == "user", PrincipalRow.name == name).with_for_update()
        ).scalar_one_or_none()
        if row is None or row.disabled or row.password_hash != verified_hash:
            return None
        return row

    def verify_password(self, name: str, password: str) -> Principal | None:
        """The enabled user `name` if `password` is theirs, else None (same work either way). A hash made
        under older argon2 parameters is replaced, unless the password changed meanwhile."""
        checked = self._checked_password(name, password)
        if checked is None:
            return None
        principal, stored = checked
        if self._hasher.check_needs_rehash(stored):
            new_hash = self._hasher.hash(password)
            with self.store.transaction(write=True) as session:
                row = self._unchanged_user(session, name, stored)
                if row is None:
                    return None
                row.password_hash = new_hash
        return principal

    def login(self, name: str, password: str, *, ttl_s: int = 8 * 3600) -> tuple[Principal, str, str] | None:
        """Check a user's password and start a session in one step: (principal, session token, CSRF token),
        or None. The session is made in the transaction that sees the password still the one verified (its
        row locked), so a password reset or a disabling that lands during the check leaves no session
        behind, and a rehash under newer argon2 parameters never overwrites a reset."""
        if ttl_s < 0:
            raise ValueError("ttl_s must be non-negative")
        checked = self._checked_password(name, password)
        if checked is None:
            return None
        principal, stored = checked
        new_hash = self._hasher.hash(password) if self._hasher.check_needs_rehash(stored) else None
        token, csrf_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self.store.transaction(write=True) as session:
            row = self._unchanged_user(session, name, stored)
            if row is None:
                return None
            if new_hash is not None:
                row.password_hash = new_hash
            self._add_session(session, row, token, csrf_token, ttl_s)
        return principal, token, csrf_token

    # -- sessions ----------------------------------------------------------------------------------------

    def create_session(self, principal: Principal, *, ttl_s: int = 8 * 3600) -> tuple[str, str]:
        """Start a login session for `principal`; return (session token, CSRF token). The session is
        valid for `ttl_s` seconds (0: already expired). KeyError if the principal does not exist."""
        if ttl_s < 0:
            raise ValueError("ttl_s must be non-negative")
        token = secrets.token_urlsafe(32)
        csrf_token = secrets.token_urlsafe(32)
        with self.store.transaction(write=True) as session:
            row = self._row(session, principal.name, principal.kind)
            if row.disabled:
                raise ValueError(f"{principal.kind} {principal.name!r} is disabled")
            self._add_session(session, row, token, csrf_token, ttl_s)
        return token, csrf_token

    def _add_session(self, session: Session, row: PrincipalRow, token: str, csrf_token: str, ttl_s: int) -> None:
        now = self.store.now()
        # Sweep expired sessions here, where a write happens anyway, so the table cannot grow forever.
        session.execute(delete(AuthSession).where(AuthSession.expires_at <= now))
        session.add(AuthSession(token_hash=_sha256_hex(token), csrf_token=csrf_token, principal_id=row.id,
                                created_at=now, expires_at=now + timedelta(seconds=ttl_s)))

    def session_principal(self, token: str) -> tuple[Principal, str] | None:
        """(principal, CSRF token) of a valid, unexpired session of an enabled principal, else None."""
        if not isinstance(token, str) or not token or len(token) > 256:
            return None
        token_hash = _sha256_hex(token)
        with self.store.transaction(write=False) as session:
            found = session.execute(
                select(AuthSession, PrincipalRow)
                .join(PrincipalRow, PrincipalRow.id == AuthSession.principal_id)
                .where(AuthSession.token_hash == token_hash)
            ).one_or_none()
        if found is None:
            return None
        auth_session, row = found
        if (not hmac.compare_digest(auth_session.token_hash, token_hash) or row.disabled
                or auth_session.expires_at <= self.store.now()):
            return None
        return _principal(row), auth_session.csrf_token

    def end_session(self, token: str) -> None:
        """Log out: the session token stops working. Unknown tokens are ignored."""
        if not isinstance(token, str) or not token:
            return
        with self.store.transaction(write=True) as session:
            session.execute(delete(AuthSession).where(AuthSession.token_hash == _sha256_hex(token)))

