"""Bearer tokens for GoCD's maintenance API over HTTP: the tokens file and who a request is.

GoCD's personal access tokens are the model. ``[http] tokens_file`` names a file with one
token a line, ``NAME HASH [ROLE]`` (``#`` starts a comment line; blank lines are skipped):

- ``NAME``: the token's name (letters, digits, ``_ . @ -``, at most 64), the ``updated_by``
  of what it changes and the name in the audit log;
- ``HASH``: ``scrypt$SALT$DIGEST``, scrypt (N=2^14, r=8, p=1, 32 bytes) of the token's
  secret with a salt of its own, both base64url; never the token;
- ``ROLE``: ``admin`` (the default: GoCD's maintenance API is for admins; enable, disable
  and info) or ``read`` (info only; enable and disable answer 403).

A token is ``NAME.SECRET`` (the secret: 32 random bytes, base64url): the name says which
line to check, so each request costs one scrypt, whether or not the name exists (an
unknown name is checked against a dummy salt, so the time does not tell), and the digests
are compared with :func:`hmac.compare_digest`. ``maintctl token add NAME`` makes a token,
appends its line and prints the token once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Literal

import msgspec

from actors.errors import Forbidden

__all__ = ["Entry", "TokenError", "TokenPeer", "Tokens", "add_token", "hash_secret", "remove_token"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z")
ROLES = ("admin", "read")
#: scrypt's cost: 16 MiB and some tens of milliseconds a check (the secret has 256 random
#: bits: the cost is there so that a copied file is of no use, not against guessing).
SCRYPT = {"n": 1 << 14, "r": 8, "p": 1, "dklen": 32, "maxmem": 64 << 20}
SALT_BYTES = 16
SECRET_BYTES = 32
MAX_FILE_BYTES = 1 << 20
_DUMMY_SALT = secrets.token_bytes(SALT_BYTES)


class TokenError(Exception):
    """The tokens file cannot be used: one line that names the file (and the line) and why."""


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    role: Literal["admin", "read"]
    salt: bytes
    digest: bytes


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **SCRYPT)


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    """``scrypt$SALT$DIGEST`` of a token's secret, with a new random salt unless given."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    return f"scrypt${_b64(salt)}${_b64(_scrypt(secret, salt))}"


def parse(text: str, where: str) -> dict[str, Entry]:
    """The entries of a tokens file's text; TokenError (``where:LINE: why``) at the first bad line."""
    entries: dict[str, Entry] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        at = f"{where}:{number}"
        if len(fields) not in (2, 3):
            raise TokenError(f"{at}: expected NAME HASH [ROLE], got {len(fields)} field(s)")
        name, hashed, role = fields[0], fields[1], fields[2] if len(fields) == 3 else "admin"
        if not NAME.match(name):
            raise TokenError(f"{at}: a token name is letters, digits, '_', '.', '@' or '-' (at most 64), got {name[:80]!r}")
        if name in entries:
            raise TokenError(f"{at}: the token name {name!r} is used twice")
        if role not in ROLES:
            raise TokenError(f"{at}: the role is 'admin' or 'read', got {role[:80]!r}")
        scheme, _, rest = hashed.partition("$")
        salt_text, _, digest_text = rest.partition("$")
        try:
            if scheme != "scrypt":
                raise ValueError
            salt, digest = _unb64(salt_text), _unb64(digest_text)
            if len(salt) < 8 or len(digest) != SCRYPT["dklen"]:
                raise ValueError
        except ValueError:
            raise TokenError(
                f"{at}: the hash of token {name!r} is not scrypt$SALT$DIGEST as `maintctl token add` writes it"
            ) from None
        entries[name] = Entry(name=name, role=role, salt=salt, digest=digest)  # type: ignore[arg-type]
    return entries


class Tokens:
    """The tokens of one reading of the file; :meth:`check` blocks (scrypt): call it in a thread."""

    def __init__(self, path: str, entries: dict[str, Entry]) -> None:
        self.path = path
        self.entries = entries

    @classmethod
    def load(cls, path: str | Path) -> Tokens:
        """Read and parse the file; TokenError (one line) if it is missing, unreadable or bad."""
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise TokenError(f"{path}: cannot read the tokens file ([http] tokens_file): {exc.strerror}") from None
        if len(data) > MAX_FILE_BYTES:
            raise TokenError(f"{path}: the tokens file is over {MAX_FILE_BYTES} bytes")
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise TokenError(f"{path}: the tokens file is not UTF-8 text") from None
        return cls(str(path), parse(text, str(path)))

    def check(self, token: str) -> Entry | None:
        """The entry whose token this is, or None; one scrypt and a constant-time compare either way."""
        name, _, secret = token.rpartition(".")
        entry = self.entries.get(name)
        digest = _scrypt(secret, entry.salt if entry is not None else _DUMMY_SALT)
        ok = hmac.compare_digest(digest, entry.digest if entry is not None else bytes(len(digest)))
        return entry if ok and entry is not None and secret else None


def loose_mode(path: str | Path) -> str | None:
    """Why the tokens file's mode lets others add a token (writable by its group or others), or None."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    if mode & 0o022:
        return f"{path} is writable by others than its owner (mode {mode:04o}): they can add tokens; chmod go-w {path}"
    return None


class TokenPeer:
    """Who asked over HTTP, shaped as :class:`daemon.auth.Peer` for the control server's checks."""

    __slots__ = ("address", "admin", "name", "role")

    job = None
    uid = None
    pid = None

    def __init__(self, entry: Entry, address: str) -> None:
        self.name = entry.name
        self.role = entry.role
        self.admin = entry.role == "admin"
        self.address = address

    @property
    def user(self) -> str:
        return self.name

    @property
    def detail(self) -> str:
        return f"http token {self.name} from {self.address}"

    def require_admin(self, action: str, admin_group: str | None) -> None:
        if not self.admin:
            raise Forbidden(f"{action} changes state and needs a token with the admin role; token {self.name!r} is read-only")


# -- maintctl token add / list / remove -----------------------------------------------------------


def _read_entries(path: Path) -> tuple[str, dict[str, Entry]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return "", {}
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"{path}: cannot read the tokens file: {getattr(exc, 'strerror', None) or exc}") from None
    return text, parse(text, str(path))


def add_token(path: Path, name: str, role: str = "admin") -> str:
    """Append a new token's line (the file made 0600 if new) and return the token, to print once."""
    if not NAME.match(name):
        raise TokenError(f"a token name is letters, digits, '_', '.', '@' or '-' (at most 64), got {name[:80]!r}")
    text, entries = _read_entries(path)
    if name in entries:
        raise TokenError(f"{path}: there is already a token named {name!r} (maintctl token remove {name} first)")
    secret = secrets.token_urlsafe(SECRET_BYTES)
    line = f"{name} {hash_secret(secret)} {role}\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(("\n" if text and not text.endswith("\n") else "") + line)
    except OSError as exc:
        raise TokenError(f"{path}: cannot write the tokens file: {exc.strerror}") from None
    return f"{name}.{secret}"


def remove_token(path: Path, name: str) -> None:
    """Remove a token's line; the file is replaced at once (a reader sees the old or the new one)."""
    text, entries = _read_entries(path)
    if name not in entries:
        raise TokenError(f"{path}: no token named {name!r}")
    kept = [line for line in text.splitlines(keepends=True) if line.split()[:1] != [name]]
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IMODE(os.stat(path).st_mode))
        with os.fdopen(fd, "w") as f:
            f.write("".join(kept))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TokenError(f"{path}: cannot write the tokens file: {exc.strerror}") from None


def list_tokens(path: Path) -> list[Entry]:
    return list(_read_entries(path)[1].values())


class TokenHolder:
    """The tokens in use: None (tokens off) or one reading of the file, replaced whole on reload."""

    def __init__(self, tokens: Tokens | None = None) -> None:
        self.tokens = tokens
