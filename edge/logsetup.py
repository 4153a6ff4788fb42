"""Logging: one event a line on stderr (journald keeps it), credentials redacted.

Line format::

    2026-11-21T06:00:00.123Z INFO edge.recorder camera=3 event=segment_opened path=/d/x.mp4 segment opened

UTC time with milliseconds, level, logger name, then ``key=value`` fields, then the message (and the
exception, if any). Fields come from ``extra``, in this order:

* ``camera`` — the camera id: ``log.info("opened", extra={"camera": 3})``;
* ``event`` — a short stable code for the event, for grepping: ``extra={"event": "segment_opened"}``;
* ``kv`` — a dict of any other fields, kept in its order: ``extra={"camera": 3, "kv": {"path": p}}``.

A value holding a space, ``=``, a quote or nothing is written as a JSON string (``path="/a b"``).
Newlines and other control characters anywhere in the line (a multi-line message, a traceback) are escaped
(``\\n``), so one record is always one line. The :class:`~edge.redact.Redactor` runs over the whole text, the
exception included, before escaping: PyAV puts ``rtsp://user:pass@…`` into its exception messages.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

from edge.errors import ConfigError
from edge.redact import Redactor

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ESCAPES = {"\n": "\\n", "\r": "\\r"}
_PLAIN_VALUE = re.compile(r"[^\s=\"']+")


def _escape(text: str) -> str:
    return _CONTROL.sub(lambda m: _ESCAPES.get(m[0], f"\\x{ord(m[0]):02x}"), text)


def _value(value: object) -> str:
    text = str(value)
    return text if _PLAIN_VALUE.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def _fields(record: logging.LogRecord) -> list[str]:
    pairs: list[str] = []
    for name in ("camera", "event"):
        if (value := record.__dict__.get(name)) is not None:
            pairs.append(f"{name}={_value(value)}")
    kv = record.__dict__.get("kv")
    if isinstance(kv, Mapping):
        pairs.extend(f"{key}={_value(value)}" for key, value in kv.items())
    return pairs


class LineFormatter(logging.Formatter):
    """Formats a record as one redacted line (see the module docstring)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # bad %-arguments must not cost the line (nor print a traceback with the args)
            message = f"{record.msg!s} (log arguments did not match the message)"
        parts = [self.formatTime(record), record.levelname, record.name, *_fields(record), message]
        text = " ".join(parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return _escape(self._redactor(text))


class _LineHandler(logging.StreamHandler[TextIO]):
    """The handler configure_logging installs (a second call replaces it)."""

    def handleError(self, record: logging.LogRecord) -> None:
        # The stock handler prints the record's message and arguments unredacted, over many lines.
        with contextlib.suppress(Exception):  # nowhere left to report to
            sys.stderr.write(f"edge: could not write a log record from {record.name}\n")


def configure_logging(level: str, redactor: Redactor, stream: TextIO | None = None) -> None:
    """Send every record of the root logger to ``stream``, one redacted line each, at ``level`` and above.

    ``stream`` defaults to ``sys.stderr`` as it is at call time. Replaces the handler an earlier call
    installed; leaves other handlers alone.
    """
    if level not in _LEVELS:
        raise ConfigError(f"log level must be one of {', '.join(_LEVELS)}, got {level!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _LineHandler)]:
        root.removeHandler(old)
    handler = _LineHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(LineFormatter(redactor))
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])


class BoundLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger with fixed fields (e.g. ``camera``) that *merges* a call's own ``extra`` into them.

    The stock adapter replaces a call's ``extra`` with its own before Python 3.13, which would silently
    drop every ``event=`` field logged through it.
    """

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def bind(logger: logging.Logger, **fields: object) -> BoundLogger:
    return BoundLogger(logger, fields)
