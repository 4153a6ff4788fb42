"""One error root for the package. Foreign errors (PyAV, sqlite, OS) are translated where they are met.

Every message is safe to show: no credentials, no secrets. ``kind`` is a short stable code for status
tables, logs and (later) HTTP mapping.
"""

from __future__ import annotations


class Error(Exception):
    """Base of every error edge raises on purpose."""

    kind = "error"

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.kind


class ConfigError(Error):
    """The installer's settings are wrong; the message names the key."""

    kind = "config"


class NotFound(Error):
    kind = "not_found"


class Malformed(Error):
    """Input that cannot be parsed (bytes, files, requests)."""

    kind = "malformed"


class SourceError(Error):
    """A camera could not be read. ``kind`` is one of: unreachable, auth_failed, not_found,
    bad_stream, timeout, unsupported, ended."""

    kind = "unreachable"


class StorageError(Error):
    kind = "storage"


class DiskFull(StorageError):
    """The database could not write because the disk is full: the caller can make room and retry."""

    kind = "disk_full"


class ExportError(Error):
    kind = "export"
