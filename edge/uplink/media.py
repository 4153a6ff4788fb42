"""End-to-end media sealing: the session key wrapped to the officer's viewer key, and each fMP4 chunk sealed.

The box makes a fresh random session key for every media session and sends it wrapped to the request's
``viewer_key``; then it sends the fMP4 init segment and the fragments as sealed frames. The hub relays the
bytes and, without the viewer's private key, sees only ciphertext.

Key wrap (version 1)::

    wrapped = enc (32 bytes) || ct (32 + 16 = 48 bytes)                     80 bytes in all
    info    = b"edge media key v1" || 0x00 || SHA-256(UTF-8(device_id || "\\n" || jti))   50 bytes

``enc || ct`` is HPKE base mode (RFC 9180), suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 /
ChaCha20-Poly1305 (KEM 0x0020, KDF 0x0001, AEAD 0x0003), single-shot: ``SealBase(pkR = viewer_key, info,
aad = "", pt = session key)``, i.e. the first ``Seal`` (sequence number 0) of a fresh base-mode context.
``device_id`` is the box's id (``aud`` of the request) and ``jti`` the request's id, both exactly as in the
token; the device id contains no newline. A key wrapped for one session does not open for another.

Frame (version 1)::

    frame  = header || ciphertext
    header = "EDGM"           4 bytes, ASCII magic
             version          u8, 1
             flags            u8, bit 0: final frame; bits 1-7 are zero
             session_id       16 bytes (the stream id: SHA-256(UTF-8(jti "/" camera))[:16], §8.1)
             seq              u64 big-endian: 0 for the first frame of the session, then +1 per frame
             length           u32 big-endian: payload length, at most 16 MiB (16,777,216)
                              34 bytes in all
    ciphertext = ChaCha20-Poly1305 (RFC 8439) with key = the 32-byte session key,
                 nonce = 0x00000000 || seq (u64 big-endian), aad = header, plaintext = payload
                 (length + 16 bytes: the ciphertext, then the tag)

The payloads, in order, are the fMP4 byte stream: the init segment, then fragments; their concatenation is a
playable fragmented MP4. The last frame has the final flag (its payload may be empty); a stream whose final
frame never came was truncated. A receiver accepts exactly seq 0, 1, 2, … of its own session: a frame with
another session id, a sequence number other than the next one (dropped, reordered or replayed frames), a
failed tag (any altered bit of header or ciphertext), or anything after the final frame fails the stream;
after one failure it accepts nothing more (as TLS does after a bad record). Each session key seals one stream
only, and the sender refuses to seal past seq 2**64 - 1 or after the final frame, so a (key, nonce) pair is
never used twice.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from edge.errors import Error

SESSION_KEY_BYTES: Final = 32
SESSION_ID_BYTES: Final = 16
VIEWER_KEY_BYTES: Final = 32
KEY_INFO_LABEL: Final = b"edge media key v1"
WRAPPED_KEY_BYTES: Final = 32 + SESSION_KEY_BYTES + 16

MAGIC: Final = b"EDGM"
VERSION: Final = 1
FLAG_FINAL: Final = 0x01
HEADER = struct.Struct(">4sBB16sQI")
HEADER_BYTES: Final = HEADER.size  # 34
TAG_BYTES: Final = 16
MAX_PAYLOAD_BYTES: Final = 16 * 1024 * 1024
MAX_SEQ: Final = 2**64 - 1

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


class MediaError(Error):
    """A key or frame could not be sealed or opened. ``kind`` says why: ``key``, ``malformed``,
    ``wrong_session``, ``out_of_order``, ``replayed``, ``tampered``, ``after_final``, ``too_large``,
    ``truncated``, ``exhausted`` or ``failed`` (the stream already failed)."""

    kind = "media"


def new_session_key() -> bytes:
    """A fresh random session key (32 bytes from the OS CSPRNG)."""
    return secrets.token_bytes(SESSION_KEY_BYTES)


def session_handle(jti: str) -> str:
    """The decision's ``session``: base64url of SHA-256(jti)[:16] (docs/protocol.md §7, §8.1)."""
    digest = hashlib.sha256(jti.encode("utf-8", "surrogatepass")).digest()[:SESSION_ID_BYTES]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def stream_id(jti: str, camera_id: int) -> bytes:
    """The 16-byte session id of one camera's stream: SHA-256(jti "/" camera)[:16] (§8.1), so a stream moved
    to another camera's connection does not open."""
    return hashlib.sha256(f"{jti}/{camera_id}".encode("utf-8", "surrogatepass")).digest()[:SESSION_ID_BYTES]


def _info(device_id: str, jti: str) -> bytes:
    if not device_id or "\n" in device_id or not jti:
        # the newline separates the two: a device id holding one would make the binding ambiguous
        raise MediaError("device_id and jti must be non-empty and device_id has no newline", kind="key")
    try:
        bound = f"{device_id}\n{jti}".encode()
    except UnicodeEncodeError:
        bound = None
    if bound is None:  # outside the except: the error holds the text and must not ride along as context
        raise MediaError("device_id or jti is not valid text", kind="key")
    return KEY_INFO_LABEL + b"\x00" + hashlib.sha256(bound).digest()


def wrap_key(session_key: bytes, viewer_key: bytes, *, device_id: str, jti: str) -> bytes:
    """HPKE-seal ``session_key`` to the raw X25519 public ``viewer_key``, bound to this device and request."""
    if len(session_key) != SESSION_KEY_BYTES:
        raise MediaError(f"a session key is {SESSION_KEY_BYTES} bytes, not {len(session_key)}", kind="key")
    if len(viewer_key) != VIEWER_KEY_BYTES:
        raise MediaError(f"a viewer key is {VIEWER_KEY_BYTES} bytes, not {len(viewer_key)}", kind="key")
    info = _info(device_id, jti)
    try:
        return _SUITE.encrypt(bytes(session_key), X25519PublicKey.from_public_bytes(viewer_key), info=info)
    except ValueError:
        # a low-order point gives an all-zero shared secret, which RFC 9180 (and OpenSSL) refuse
        raise MediaError("the viewer key is not a usable X25519 public key", kind="key") from None


def unwrap_key(wrapped: bytes, viewer_private: X25519PrivateKey, *, device_id: str, jti: str) -> bytes:
    """Open a wrapped session key. Another viewer key, device id or jti, or an altered byte: MediaError."""
    if len(wrapped) != WRAPPED_KEY_BYTES:
        raise MediaError(f"a wrapped key is {WRAPPED_KEY_BYTES} bytes, not {len(wrapped)}", kind="key")
    info = _info(device_id, jti)
    try:
        return _SUITE.decrypt(bytes(wrapped), viewer_private, info=info)
    except (InvalidTag, ValueError):
        raise MediaError(
            "the session key does not open: another viewer key, another session, or altered", kind="key"
        ) from None


def _check_key(key: bytes, session_id: bytes) -> None:
    if len(key) != SESSION_KEY_BYTES:
        raise MediaError(f"a session key is {SESSION_KEY_BYTES} bytes, not {len(key)}", kind="key")
    if len(session_id) != SESSION_ID_BYTES:
        raise MediaError(f"a session id is {SESSION_ID_BYTES} bytes, not {len(session_id)}", kind="key")


def _nonce(seq: int) -> bytes:
    return b"\x00\x00\x00\x00" + seq.to_bytes(8, "big")


class FrameSealer:
    """The box's side of one session: seals payloads as frames 0, 1, 2, … Not thread-safe; one per key."""

    __slots__ = ("_aead", "_done", "_seq", "_session_id")

    def __init__(self, key: bytes, session_id: bytes) -> None:
        _check_key(key, session_id)
        self._aead = ChaCha20Poly1305(bytes(key))
        self._session_id = bytes(session_id)
        self._seq = 0
        self._done = False

    @property
    def seq(self) -> int:
        """The sequence number the next frame will get."""
        return self._seq

    @property
    def done(self) -> bool:
        """True once the final frame was sealed."""
        return self._done

    def seal(self, payload: bytes, *, final: bool = False) -> bytes:
        """The next frame for ``payload``; ``final`` marks the last one, after which nothing is sealed."""
        if self._done:
            raise MediaError("the final frame was sealed; the session sends nothing more", kind="after_final")
        if self._seq > MAX_SEQ:
            raise MediaError("the sequence number would wrap; start a new session", kind="exhausted")
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise MediaError(
                f"a frame carries at most {MAX_PAYLOAD_BYTES} bytes, not {len(payload)}", kind="too_large"
            )
        flags = FLAG_FINAL if final else 0
        header = HEADER.pack(MAGIC, VERSION, flags, self._session_id, self._seq, len(payload))
        frame = header + self._aead.encrypt(_nonce(self._seq), bytes(payload), header)
        self._seq += 1
        self._done = final
        return frame


class FrameOpener:
    """The viewer's side of one session: opens its own session's frames 0, 1, 2, … in order, once each."""

    __slots__ = ("_aead", "_done", "_failure", "_seq", "_session_id")

    def __init__(self, key: bytes, session_id: bytes) -> None:
        _check_key(key, session_id)
        self._aead = ChaCha20Poly1305(bytes(key))
        self._session_id = bytes(session_id)
        self._seq = 0
        self._done = False
        self._failure: str | None = None

    @property
    def done(self) -> bool:
        """True once the final frame was opened: the stream is complete."""
        return self._done

    @property
    def seq(self) -> int:
        """The sequence number of the next frame expected."""
        return self._seq

    def open(self, frame: bytes) -> bytes:
        """The payload of the next frame; any fault raises MediaError and fails the stream for good."""
        if self._failure is not None:
            raise MediaError(f"the stream already failed ({self._failure})", kind="failed")
        try:
            return self._open(frame)
        except MediaError as e:
            self._failure = e.message
            raise

    def _open(self, frame: bytes) -> bytes:
        if len(frame) < HEADER_BYTES + TAG_BYTES:
            raise MediaError(
                f"a frame is at least {HEADER_BYTES + TAG_BYTES} bytes, not {len(frame)}", kind="malformed"
            )
        header = bytes(frame[:HEADER_BYTES])
        magic, version, flags, session_id, seq, length = HEADER.unpack(header)
        if magic != MAGIC:
            raise MediaError("not an edge media frame (bad magic)", kind="malformed")
        if version != VERSION:
            raise MediaError(f"unsupported frame version {version}", kind="malformed")
        if flags & ~FLAG_FINAL:
            raise MediaError(f"unknown frame flags 0x{flags:02x}", kind="malformed")
        if session_id != self._session_id:
            raise MediaError("the frame belongs to another session", kind="wrong_session")
        if self._done:
            raise MediaError("a frame after the final frame", kind="after_final")
        if seq < self._seq:
            raise MediaError(f"frame {seq} came again or late (expected {self._seq})", kind="replayed")
        if seq > self._seq:
            raise MediaError(
                f"frame {seq} came while {self._seq} was expected: frames dropped or reordered",
                kind="out_of_order",
            )
        if length > MAX_PAYLOAD_BYTES:
            raise MediaError(f"the frame claims {length} bytes, over {MAX_PAYLOAD_BYTES}", kind="too_large")
        if len(frame) != HEADER_BYTES + length + TAG_BYTES:
            raise MediaError(
                f"the frame is {len(frame)} bytes, its header says {HEADER_BYTES + length + TAG_BYTES}",
                kind="malformed",
            )
        try:
            payload = self._aead.decrypt(_nonce(seq), bytes(frame[HEADER_BYTES:]), header)
        except InvalidTag:
            raise MediaError(f"frame {seq} was altered (authentication failed)", kind="tampered") from None
        self._seq += 1
        self._done = bool(flags & FLAG_FINAL)
        return payload

    def finish(self) -> None:
        """Call when the stream ends: MediaError unless the final frame was opened."""
        if self._failure is not None:
            raise MediaError(f"the stream already failed ({self._failure})", kind="failed")
        if not self._done:
            raise MediaError(
                f"truncated: the stream ended after {self._seq} frame(s) without the final frame",
                kind="truncated",
            )
