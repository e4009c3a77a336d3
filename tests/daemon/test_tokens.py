"""The tokens file of GoCD's API over HTTP (daemon/tokens.py): hashes, never tokens; checks in constant time."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from actors.errors import Forbidden
from daemon import tokens
from daemon.tokens import TokenError, TokenPeer, Tokens, add_token, list_tokens, remove_token


def test_a_token_is_checked_against_its_salted_hash(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    ci = add_token(path, "ci")
    other = add_token(path, "other", "read")
    loaded = Tokens.load(path)
    assert loaded.check(ci).name == "ci"  # type: ignore[union-attr]
    entry = loaded.check(other)
    assert entry is not None and (entry.name, entry.role) == ("other", "read")
    for wrong in ("", ".", "ci.", ci + "x", ci[:-1], "nobody." + ci.partition(".")[2], other.replace("other.", "ci.")):
        assert loaded.check(wrong) is None, wrong
    # the same secret has a different hash with a different salt
    secret = ci.partition(".")[2]
    assert tokens.hash_secret(secret) != tokens.hash_secret(secret)


def test_the_file_holds_no_token_and_only_its_owner_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    old = os.umask(0)
    try:
        token = add_token(path, "ci")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    secret = token.partition(".")[2]
    assert secret not in text and text.startswith("ci scrypt$") and text.endswith(" admin\n")
    assert len(secret) >= 43  # 32 random bytes


def test_every_check_is_one_scrypt_and_a_constant_time_compare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tokens"
    ci = add_token(path, "ci")
    loaded = Tokens.load(path)
    compared: list[tuple[bytes, bytes]] = []
    hashed: list[bytes] = []
    real_compare, real_scrypt = tokens.hmac.compare_digest, tokens._scrypt

    def compare(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    def scrypt(secret: str, salt: bytes) -> bytes:
        hashed.append(salt)
        return real_scrypt(secret, salt)

    monkeypatch.setattr(tokens.hmac, "compare_digest", compare)
    monkeypatch.setattr(tokens, "_scrypt", scrypt)
    # a right token, a wrong secret, an unknown name: the same work each time (the name is not told)
    assert loaded.check(ci) is not None
    assert loaded.check("ci.wrong") is None
    assert loaded.check("nobody.wrong") is None
    assert len(compared) == 3 and len(hashed) == 3
    assert hashed[0] == hashed[1] == loaded.entries["ci"].salt and hashed[2] != hashed[0]
    assert all(len(a) == len(b) == 32 for a, b in compared)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("ci\n", "tokens:1: expected NAME HASH [ROLE], got 1 field(s)"),
        ("# comment\n\nci x admin extra\n", "tokens:3: expected NAME HASH [ROLE], got 4 field(s)"),
        ("-ci scrypt$a$b\n", "tokens:1: a token name is letters"),
        ("ci md5$abc$def\n", "tokens:1: the hash of token 'ci' is not scrypt$SALT$DIGEST"),
        ("ci scrypt$!!!!$def\n", "tokens:1: the hash of token 'ci' is not"),
        ("ci {h} admin\nci {h} read\n", "tokens:2: the token name 'ci' is used twice"),
        ("ci {h} root\n", "tokens:1: the role is 'admin' or 'read', got 'root'"),
    ],
)
def test_a_bad_line_is_one_line_that_names_it(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text.replace("{h}", tokens.hash_secret("s")))
    with pytest.raises(TokenError) as caught:
        Tokens.load(path)
    assert str(caught.value).startswith(f"{path}") and error in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_or_binary_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match=r"cannot read the tokens file \(\[http\] tokens_file\): No such file"):
        Tokens.load(tmp_path / "absent")
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    with pytest.raises(TokenError, match="not UTF-8"):
        Tokens.load(tmp_path / "bin")


def test_add_refuses_a_duplicate_and_remove_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    add_token(path, "ci")
    keep = add_token(path, "monitor", "read")
    with pytest.raises(TokenError, match="already a token named 'ci'"):
        add_token(path, "ci")
    with pytest.raises(TokenError, match="a token name is"):
        add_token(path, "bad name")
    remove_token(path, "ci")
    assert [(e.name, e.role) for e in list_tokens(path)] == [("monitor", "read")]
    assert Tokens.load(path).check(keep) is not None
    with pytest.raises(TokenError, match="no token named 'ci'"):
        remove_token(path, "ci")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_read_token_may_not_change_state(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    reader, admin = add_token(path, "monitor", "read"), add_token(path, "ci")
    loaded = Tokens.load(path)
    peer = TokenPeer(loaded.check(reader), "127.0.0.1 port 5")  # type: ignore[arg-type]
    with pytest.raises(Forbidden, match="read-only"):
        peer.require_admin("enable", "maintd")
    ok = TokenPeer(loaded.check(admin), "127.0.0.1 port 5")  # type: ignore[arg-type]
    ok.require_admin("enable", "maintd")
    assert (ok.user, ok.detail) == ("ci", "http token ci from 127.0.0.1 port 5")


def test_a_file_others_can_write_is_named(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    add_token(path, "ci")
    assert tokens.loose_mode(path) is None
    path.chmod(0o622)
    assert "writable by others" in (tokens.loose_mode(path) or "")
