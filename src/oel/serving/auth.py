"""Bearer-token API keys for `oel serve` (and, later, a gateway with per-client keys).

Keys come from three places, all optional and all merged: a list in the config
(`api_keys=[...]`), an environment variable (comma-separated, `OEL_API_KEYS` by default)
and a file (one entry per line, `#` comments). Each entry is `key` or `client:key`, where
`client` names who holds the key (for logs and per-client limits; it is not a secret):

    # /etc/oel/keys.txt -- chmod 600
    alice:Zq3v...32 or more random characters...
    ci-runner:8hLw...                            # a trailing comment after whitespace
    Ux9d...                                      # unnamed: called "keys.txt:4"

The part before the FIRST `:` is the client name when it looks like one (letters, digits,
`_ . -`); a key that itself contains `:` must therefore be written with a name. Keys are
at least `MIN_KEY_CHARS` visible ASCII characters without spaces (make one with
`python -c "import secrets; print(secrets.token_urlsafe(32))"`).

Only SHA-256 digests of the keys are kept. A presented token is hashed and compared with
EVERY digest by `hmac.compare_digest`, without stopping at a match, so the time taken says
neither which key matched nor how much of one did; the equal-length digests also hide the
keys' lengths. Error messages and reprs name where a key was given (`api_keys[1]`,
`keys.txt:3`), never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from oel.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_KEYS_ENV = "OEL_API_KEYS"
MIN_KEY_CHARS = 16
"""Shorter keys are refused: a guessable key is no key (token_urlsafe(32) gives 43)."""
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")
"""Visible ASCII, no spaces: what fits in an `Authorization: Bearer` header unquoted."""
_BEARER = "bearer"
_LOOPBACK_NAMES = frozenset({"localhost"})


@dataclass(frozen=True)
class ApiKey:
    """One accepted key: who holds it, where it was given, and its digest (never the key)."""

    client: str
    where: str
    digest: bytes = field(repr=False)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def parse_key_entry(entry: str, where: str) -> ApiKey:
    """`key` or `client:key` -> ApiKey; ConfigError names `where`, never the key."""
    name, sep, key = entry.partition(":")
    if not (sep and _CLIENT_NAME.fullmatch(name)):
        name, key = where, entry
    if not _KEY_CHARS.fullmatch(key):
        raise ConfigError(f"{where}: an API key must be visible ASCII characters without spaces")
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"{where}: API key shorter than {MIN_KEY_CHARS} characters "
                          "(make one with secrets.token_urlsafe(32))")
    return ApiKey(client=name, where=where, digest=_digest(key))


def keys_from_list(entries: Sequence[str], field_name: str = "api_keys") -> list[ApiKey]:
    return [parse_key_entry(e.strip(), f"{field_name}[{i}]") for i, e in enumerate(entries)]


def keys_from_env(var: str, environ: Mapping[str, str] | None = None) -> list[ApiKey]:
    """Comma-separated entries of `$var`; unset or empty gives none."""
    raw = (os.environ if environ is None else environ).get(var, "") if var else ""
    entries = [e.strip() for e in raw.split(",")]
    return [parse_key_entry(e, f"${var}[{i}]") for i, e in enumerate(entries) if e]


def keys_from_file(path: str | os.PathLike) -> list[ApiKey]:
    """One entry per line; blank lines and `#` comments (whole-line or after whitespace) skipped."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"api_keys_file: {p}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"api_keys_file: {p}: cannot be read ({type(e).__name__})") from None
    _warn_if_others_can_read(p)
    keys = []
    for number, line in enumerate(lines, start=1):
        entry, *rest = line.split(None, 1) or [""]
        if not entry or entry.startswith("#"):
            continue
        if rest and not rest[0].startswith("#"):
            raise ConfigError(f"{p.name}:{number}: expected one `key` or `client:key` per line (no spaces)")
        keys.append(parse_key_entry(entry, f"{p.name}:{number}"))
    return keys


def _warn_if_others_can_read(path: Path) -> None:
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s: API key file is readable by other users; chmod 600 it", path)


class ApiKeys:
    """The accepted keys; `check(header)` / `client(header)` answer for an Authorization header."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self._keys = list(keys)
        seen: dict[bytes, str] = {}
        for k in self._keys:
            if k.digest in seen:
                raise ConfigError(f"{k.where}: the same API key is already given at {seen[k.digest]}")
            seen[k.digest] = k.where

    @classmethod
    def load(cls, keys: Sequence[str] = (), *, file: str = "", env_var: str = DEFAULT_KEYS_ENV,
             environ: Mapping[str, str] | None = None) -> "ApiKeys":
        """Merge the three sources: config list, `$env_var` (skipped when empty) and `file` (when set)."""
        found = keys_from_list(keys) + keys_from_env(env_var, environ)
        if file:
            found += keys_from_file(file)
        return cls(found)

    def __len__(self) -> int:
        return len(self._keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._keys)} keys, clients {sorted(set(self.clients))})"

    @property
    def clients(self) -> list[str]:
        return [k.client for k in self._keys]

    def client(self, authorization: str | None) -> str | None:
        """The client whose key `Authorization: Bearer <key>` carries, or None.

        Every digest is compared, match or not: the loop's time does not depend on which matched.
        """
        token = bearer_token(authorization)
        if token is None:
            return None
        presented = _digest(token)
        match: str | None = None
        for key in self._keys:
            if hmac.compare_digest(presented, key.digest):
                match = key.client
        return match

    def check(self, authorization: str | None) -> bool:
        """True when the header carries one of the keys."""
        return self.client(authorization) is not None


def bearer_token(authorization: str | None) -> str | None:
    """The token of `Bearer <token>` (scheme case-insensitive, RFC 6750), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == _BEARER and token else None


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`; anything else (0.0.0.0, "", a hostname) is not."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_keys_off_loopback(host: str, keys: ApiKeys, *, env_var: str = DEFAULT_KEYS_ENV) -> None:
    """Refuse to expose a model beyond this machine without a key (one-line ConfigError)."""
    if keys or is_loopback(host):
        return
    where = f"${env_var}, " if env_var else ""
    raise ConfigError(f"host: {host!r} is not a loopback address and no API key is configured; "
                      f"give keys ({where}api_keys_file=... or api_keys=[...]) or bind 127.0.0.1")
