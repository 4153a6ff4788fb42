"""Keep credentials out of text: URLs, exception messages, log lines.

Three tools, from narrow to broad:

* :func:`redact_url` — one URL: the password in the userinfo becomes ``***`` (the user name stays, it helps
  tell cameras apart), and so do secret-looking query parameters (``password``, ``pwd``, ``token``, …).
* :func:`redact_text` — free text (PyAV puts the whole input URL into its exception messages): every URL with
  credentials found anywhere, plus every occurrence of each given secret, raw or percent-encoded.
* :class:`Redactor` — a thread-safe set of known secrets (the cameras' passwords the daemon has opened),
  passed explicitly to whoever writes text out (the log handler, the web error pages). No module global.

The authority of a URL ends at the first ``/``, ``?``, ``#`` or whitespace, and the userinfo at the *last*
``@`` before that — as RFC 3986 and FFmpeg's ``av_url_split`` read it. A password with an unencoded space
cannot be found by URL shape alone; that is why the secrets themselves are registered too.
When in doubt we redact too much, never too little.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterable

MASK = "***"

# Query parameters whose value is a credential. Camera firmwares use all of these (Hikvision ``password``,
# Dahua/Foscam ``pwd``/``loginpas``, many ``token``/``auth``).
_SECRET_PARAMS = (
    "password",
    "passwd",
    "pass",
    "pwd",
    "pw",
    "loginpas",
    "token",
    "access_token",
    "auth_token",
    "auth",
    "apikey",
    "api_key",
    "key",
    "secret",
    "signature",
    "sig",
)

# scheme "://" then the authority's userinfo: everything up to the LAST "@" before the authority ends.
# group "user": up to the first ":" ; group "password": after it (absent for a user-only URL). A password may
# hold a raw "?" or "#" (a mistyped URL is what ends up in an error message), never a space or "/".
_USERINFO = re.compile(
    r"""
    (?P<prefix>\b[A-Za-z][A-Za-z0-9+.\-]*://)
    (?P<user>[^\s/?#@:]*)
    (?::(?P<password>[^\s/]*))?
    @(?=[^\s/?#@]*(?:[\s/?#]|$))
    """,
    re.VERBOSE,
)
# A query value runs to the next "&", "#", ";", quote, angle bracket or whitespace: a trailing ")" or "," in
# prose is masked with it (too much rather than too little).
_PARAM = re.compile(
    r"(?P<name>[?&;](?:"
    + "|".join(re.escape(p) for p in _SECRET_PARAMS)
    + r""")=)(?P<value>[^&#;\s'"<>]*)""",
    re.IGNORECASE,
)


def _redact_userinfo(match: re.Match[str]) -> str:
    if match.group("password") is None:
        return match.group(0)  # user-only: nothing to hide
    return f"{match.group('prefix')}{match.group('user')}:{MASK}@"


def _redact_param(match: re.Match[str]) -> str:
    return match.group("name") + (MASK if match.group("value") else "")


def _redact_urls(text: str) -> str:
    return _PARAM.sub(_redact_param, _USERINFO.sub(_redact_userinfo, text))


def redact_url(url: str) -> str:
    """``rtsp://user:pa%40ss@host:554/x?pwd=1`` → ``rtsp://user:***@host:554/x?pwd=***``."""
    return _redact_urls(url)


def _char_pattern(char: str) -> str:
    """The character itself or its UTF-8 percent-encoding, hex in either case (``+`` for a space too)."""
    encoded = "".join(
        "%" + "".join(f"[{d.upper()}{d.lower()}]" if d.isalpha() else d for d in f"{byte:02x}")
        for byte in char.encode("utf-8", "surrogatepass")
    )
    options = [encoded, re.escape(char)]  # encoded first: for "%", "%25" must win over "%"
    if char == " ":
        options.append(r"\+")
    return "(?:" + "|".join(options) + ")"


def _secrets_pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    unique = sorted({s for s in secrets if s}, key=len, reverse=True)  # longest first: no partial leaks
    if not unique:
        return None
    return re.compile("|".join("".join(_char_pattern(c) for c in s) for s in unique))


def _redact(text: str, pattern: re.Pattern[str] | None) -> str:
    # Known secrets first: a secret that itself looks like a URL with credentials is then masked whole.
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _redact_urls(text)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Redact every URL credential in ``text`` and every occurrence of each secret (raw or %-encoded)."""
    return _redact(text, _secrets_pattern(secrets))


class Redactor:
    """A thread-safe multiset of known secrets; calling it redacts text.

    A secret added twice (two cameras, one password) stays until it is discarded twice. Empty secrets are
    ignored. Very short secrets are still redacted wherever they appear: ugly logs beat a leaked password.
    """

    __slots__ = ("_lock", "_pattern", "_secrets")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: Counter[str] = Counter(s for s in secrets if s)
        self._pattern = _secrets_pattern(self._secrets)

    def add(self, secret: str) -> None:
        if not secret:
            return
        with self._lock:
            self._secrets[secret] += 1
            if self._secrets[secret] == 1:
                self._pattern = _secrets_pattern(self._secrets)

    def discard(self, secret: str) -> None:
        with self._lock:
            if self._secrets[secret] <= 0:
                return
            self._secrets[secret] -= 1
            if self._secrets[secret] == 0:
                del self._secrets[secret]
                self._pattern = _secrets_pattern(self._secrets)

    def __call__(self, text: str) -> str:
        return _redact(text, self._pattern)  # one read of the swapped-in pattern: no lock needed

    def __len__(self) -> int:
        with self._lock:
            return len(self._secrets)

    def __repr__(self) -> str:
        return f"Redactor({len(self)} secrets)"
