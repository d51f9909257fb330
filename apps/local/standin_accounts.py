"""The stand-in hub's accounts: users and invitations in its SQLite database, with Tabby 0.32's rules for them.

What `fleet hub bootstrap` needs of Tabby's webserver, kept as Tabby keeps it (tabby v0.32.0, read from source):

- The first ``register`` on a hub without an admin makes the **owner** (user 1, an admin) and needs no
  invitation; every later one needs the code of an invitation made for that email, used up by the registration
  (ee/tabby-webserver/src/service/auth.rs:95-151 and check_invitation 837-862; ee/tabby-db/src/users.rs:61-101).
- ``createInvitation`` needs an admin's **login** (a JWT, not an ``auth_...`` token), refuses an email already
  registered or invited, and a hub whose seats are all taken (schema/mod.rs:221-250, 1270-1274; auth.rs:473-492;
  tabby-db/src/invitations.rs:58-80; schema/license.rs:64-72).
- ``tokenAuth`` checks email and password and answers a login JWT (auth.rs:313-348); each user has an auth token
  ``auth_<uuid hex>`` (users.rs:292-295), read as ``me { authToken }``.
- Input rules and messages of ``RegisterInput`` (schema/auth.rs:83-111, 547-590): email at most 128
  characters, password 8 to 20 with a lower and an upper case letter, a digit and a punctuation character.

What it fakes: JWTs are HS256 over ``{sub, iat, exp, is_generated_from_auth_token}`` with the hub's JWT secret
(``TABBY_WEBSERVER_JWT_TOKEN_SECRET``, else one made per process), valid 30 minutes as Tabby's (jwt.rs:18);
refresh tokens are made but never accepted back; passwords are PBKDF2 (Tabby: argon2); the email check is a
plain pattern; the licence is always the community one (5 seats). The users of ``FLEET_HUB_STANDIN_USERS``
(token -> name) stay as they were: never admins, outside this database, counted as seats.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import string
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

COMMUNITY_SEATS = 5  # Tabby's community licence (schema/license.rs:43-49)
JWT_SECONDS = 30 * 60  # an access token's life (ee/tabby-webserver/src/jwt.rs:18)
OWNER_ID = 1  # Tabby's owner is user 1 (tabby-db/src/users.rs:30, 43-45)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = re.compile(rf"^[^@\s]+@{_LABEL}(?:\.{_LABEL})*$")


class AccountError(Exception):
    """A refusal, in Tabby's words (the GraphQL error's message)."""


@dataclass(frozen=True, slots=True)
class Account:
    """One user as ``me`` shows it; ``by_auth_token``: the request authenticated with its ``auth_...`` token."""

    id: str
    email: str
    name: str
    is_admin: bool
    is_owner: bool
    auth_token: str
    by_auth_token: bool
    created_at: str = "2026-01-26T00:00:00Z"

    def graphql(self) -> dict[str, Any]:
        """The ``UserSecured`` object (schema.graphql:1374-1385)."""
        return {
            "id": self.id, "email": self.email, "name": self.name, "createdAt": self.created_at,
            "isAdmin": self.is_admin, "isOwner": self.is_owner, "active": True, "authToken": self.auth_token,
            "isPasswordSet": True, "isSsoUser": False,
        }  # fmt: skip


class Accounts:
    """Users and invitations in the stand-in's database, and the fixed users of ``FLEET_HUB_STANDIN_USERS``."""

    def __init__(self, db: sqlite3.Connection, fixed: Mapping[str, str], jwt_secret: str | None) -> None:
        self.db = db
        self.fixed = dict(fixed)  # auth token -> name, as before registration existed
        self.secret = (jwt_secret or uuid.uuid4().hex).encode()
        db.execute(
            "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL UNIQUE, "
            "name TEXT NOT NULL, password TEXT NOT NULL, is_admin INTEGER NOT NULL, auth_token TEXT NOT NULL UNIQUE, "
            "created_at TEXT NOT NULL)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS invitations (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL "
            "UNIQUE, code TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL)"
        )
        db.commit()

    # -- who is asking ---------------------------------------------------------------------------------

    def by_bearer(self, authorization: object) -> Account | None:
        """The account a ``Bearer`` value names: a login JWT, a registered user's ``auth_...`` token, or a fixed
        user's token; None for anything else."""
        if not isinstance(authorization, str):
            return None
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        if token in self.fixed:
            name = self.fixed[token]
            return Account(f"user-{name}", f"{name}@stand-in.invalid", name, False, False, token, True)
        if token.count(".") == 2:
            rowid = self._jwt_subject(token)
            return self._user("id = ?", rowid, by_auth_token=False) if rowid is not None else None
        return self._user("auth_token = ?", token, by_auth_token=True)

    def _user(self, where: str, value: object, *, by_auth_token: bool) -> Account | None:
        row = self.db.execute(
            f"SELECT id, email, name, is_admin, auth_token, created_at FROM users WHERE {where}", (value,)
        ).fetchone()
        if row is None:
            return None
        rowid, email, name, is_admin, auth_token, created = row
        owner = rowid == OWNER_ID
        return Account(f"db-{rowid}", email, name, bool(is_admin), owner, auth_token, by_auth_token, created)

    # -- mutations ------------------------------------------------------------------------------------

    def register(self, email: str, password1: str, password2: str, code: str | None, name: str) -> dict[str, str]:
        """``register``: the owner when no admin exists, else a user invited by ``code``; a login (RegisterResponse)."""
        _check_register(email, password1, password2)
        owner = not self.is_admin_initialized()
        invitation = None
        if not owner:
            invitation = self.db.execute("SELECT id, email FROM invitations WHERE code = ?", (code or "",)).fetchone()
            if invitation is None:
                raise AccountError("Invitation code is not valid")
            if invitation[1] != email:
                raise AccountError("Invitation code is not for this email address")
        if self.db.execute("SELECT 1 FROM users WHERE email = ?", (email,)).fetchone():
            raise AccountError("Email is already registered")
        with self.db:
            if invitation is not None:
                self.db.execute("DELETE FROM invitations WHERE id = ?", (invitation[0],))
            cursor = self.db.execute(
                "INSERT INTO users (email, name, password, is_admin, auth_token, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (email, name, _hash_password(password1), owner, f"auth_{uuid.uuid4().hex}", _now()),
            )
        return self._login(int(cursor.lastrowid or 0))

    def token_auth(self, email: str, password: str) -> dict[str, str]:
        """``tokenAuth``: a login for the right email and password."""
        row = self.db.execute("SELECT id, password FROM users WHERE email = ?", (email,)).fetchone()
        if row is None or not _password_matches(password, row[1]):
            raise AccountError("Invalid email address or password")
        return self._login(int(row[0]))

    def create_invitation(self, caller: Account | None, email: str) -> str:
        """``createInvitation``: the invitation's ID (its code is read from ``invitations``)."""
        _check_admin(caller)
        if self.seats_used() + 1 > COMMUNITY_SEATS:
            raise AccountError("No sufficient seats under current license")
        if self.db.execute("SELECT 1 FROM users WHERE email = ?", (email,)).fetchone():
            raise AccountError("User already registered")
        try:
            with self.db:
                cursor = self.db.execute(
                    "INSERT INTO invitations (email, code, created_at) VALUES (?, ?, ?)",
                    (email, str(uuid.uuid4()), _now()),
                )
        except sqlite3.IntegrityError:
            raise AccountError("Failed to create invitation, email already exists") from None
        return f"inv-{cursor.lastrowid}"

    # -- queries --------------------------------------------------------------------------------------

    def invitations(self, caller: Account | None) -> list[dict[str, Any]]:
        _check_admin(caller)
        rows = self.db.execute("SELECT id, email, code, created_at FROM invitations ORDER BY id").fetchall()
        return [{"id": f"inv-{r[0]}", "email": r[1], "code": r[2], "createdAt": r[3]} for r in rows]

    def users(self, caller: Account | None) -> list[dict[str, Any]]:
        _check_user(caller)
        rows = self.db.execute("SELECT id, email, name, is_admin, created_at FROM users ORDER BY id").fetchall()
        return [
            {"id": f"db-{r[0]}", "email": r[1], "name": r[2], "createdAt": r[4], "isAdmin": bool(r[3]),
             "isOwner": r[0] == OWNER_ID, "active": True, "isSsoUser": False}
            for r in rows
        ]  # fmt: skip

    def license(self) -> dict[str, Any]:
        used = self.seats_used()
        status = "SEATS_EXCEEDED" if used > COMMUNITY_SEATS else "OK"
        return {"type": "COMMUNITY", "status": status, "seats": COMMUNITY_SEATS, "seatsUsed": used}

    def seats_used(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM users").fetchone()[0]) + len(self.fixed)

    def is_admin_initialized(self) -> bool:
        return self.db.execute("SELECT 1 FROM users WHERE is_admin").fetchone() is not None

    # -- JWTs -----------------------------------------------------------------------------------------

    def _login(self, rowid: int) -> dict[str, str]:
        now = int(time.time())
        claims = {"sub": str(rowid), "iat": now, "exp": now + JWT_SECONDS, "is_generated_from_auth_token": False}
        head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64(json.dumps(claims).encode())
        signature = _b64(hmac.new(self.secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
        return {"accessToken": f"{head}.{body}.{signature}", "refreshToken": secrets.token_hex(16)}

    def _jwt_subject(self, token: str) -> int | None:
        head, body, signature = token.split(".")
        expected = _b64(hmac.new(self.secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, signature):
            return None
        try:
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            return int(claims["sub"]) if claims["exp"] > time.time() else None
        except (ValueError, KeyError, TypeError):
            return None


def _check_user(caller: Account | None) -> Account:
    """Tabby's ``check_user``: a login JWT (schema/mod.rs:215-250)."""
    if caller is None:
        raise AccountError("You're not logged in")
    if caller.by_auth_token:
        raise AccountError("Invoking this API with an auth token is not allowed")
    return caller


def _check_admin(caller: Account | None) -> None:
    if not _check_user(caller).is_admin:
        raise AccountError("You must be admin to proceed")


def _check_register(email: str, password1: str, password2: str) -> None:
    if not _EMAIL.match(email):
        raise AccountError("Email is invalid")
    if len(email) > 128:
        raise AccountError("Email must be at most 128 characters")
    if not 8 <= len(password1) <= 20:
        raise AccountError("Password must be between 8 and 20 characters")
    for chars, what in (
        (string.ascii_lowercase, "at least one lowercase character"),
        (string.ascii_uppercase, "at least one uppercase character"),
        (string.digits, "at least one numeric character"),
        (string.punctuation, "at least one special character, e.g @#$%^&{}"),
    ):
        if not any(c in chars for c in password1):
            raise AccountError(f"Password should contain {what}")
    if password2 != password1:
        raise AccountError("Passwords do not match")


def _hash_password(password: str) -> str:
    salt = secrets.token_hex(16)
    return salt + ":" + hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), 100_000).hex()


def _password_matches(password: str, stored: str) -> bool:
    salt, _, digest = stored.partition(":")
    return hmac.compare_digest(hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), 100_000).hex(), digest)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
