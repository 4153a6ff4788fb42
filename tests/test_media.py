"""End-to-end media sealing: real fMP4 through sealed frames, what a relay sees, tampering, HPKE interop."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from pyhpke import AEADId, CipherSuite, KDFId, KEMId

from edge.errors import Error
from edge.recorder.fmp4 import iter_boxes
from edge.uplink.media import (
    HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_SEQ,
    SESSION_KEY_BYTES,
    WRAPPED_KEY_BYTES,
    FrameOpener,
    FrameSealer,
    MediaError,
    new_session_key,
    unwrap_key,
    wrap_key,
)
from tests.fmp4_samples import Muxed

DEVICE = "edge-" + "ab" * 16
JTI = "q1w2e3r4t5y6u7i8o9p0Aa"  # 22 base64url characters: 132 bits


def session_id(jti: str = JTI) -> bytes:
    return hashlib.sha256(jti.encode()).digest()[:16]


def raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def documented_info(device_id: str, jti: str) -> bytes:
    """The key-wrap info, built from the module docstring rather than from the module."""
    return b"edge media key v1" + b"\x00" + hashlib.sha256(f"{device_id}\n{jti}".encode()).digest()


def chunks(sample: Muxed) -> list[bytes]:
    """The init segment (everything before the first moof), then each fragment (moof to the next moof)."""
    starts = [b.offset for b in iter_boxes(sample.data) if b.type == "moof"]
    cuts = [0, *starts, len(sample.data)]
    parts = [sample.data[a:b] for a, b in itertools.pairwise(cuts)]
    assert parts[0][4:8] == b"ftyp" and len(parts) >= 4
    assert all(p[4:8] == b"moof" for p in parts[1:])
    return parts


def seal_all(parts: list[bytes], key: bytes, sid: bytes) -> list[bytes]:
    sealer = FrameSealer(key, sid)
    frames = [sealer.seal(p, final=i == len(parts) - 1) for i, p in enumerate(parts)]
    assert sealer.done
    return frames


def open_all(frames: list[bytes], key: bytes, sid: bytes) -> bytes:
    opener = FrameOpener(key, sid)
    out = b"".join(opener.open(f) for f in frames)
    opener.finish()
    return out


def decode(path: Path, fmt: str | None = None) -> tuple[set[str], list[np.ndarray]]:
    """What PyAV makes of ``path``: the video codecs it finds and the pictures (grey) it decodes."""
    codecs: set[str] = set()
    pictures: list[np.ndarray] = []
    with contextlib.suppress(av.FFmpegError), av.open(str(path), format=fmt) as container:
        codecs = {s.codec_context.name for s in container.streams.video}
        if container.streams.video:
            for frame in container.decode(video=0):
                pictures.append(frame.to_ndarray(format="gray"))
                if len(pictures) > 1000:
                    break
    return codecs, pictures


def resembles(picture: np.ndarray, originals: list[np.ndarray]) -> bool:
    # The sample's pictures differ from one another by >= 50 grey levels on average (and from flat grey by
    # >= 38): 20 tells "one of ours" from anything else.
    return any(
        picture.shape == o.shape and float(np.abs(picture.astype(int) - o.astype(int)).mean()) < 20
        for o in originals
    )


def ffprobe_video(path: Path, fmt: str | None = None) -> tuple[int, list[str]]:
    """ffprobe's exit code and, per video stream, "codec,packets"."""
    cmd = ["ffprobe", "-v", "error", "-select_streams", "v", "-count_packets"]
    cmd += ["-show_entries", "stream=codec_name,nb_read_packets", "-of", "csv=p=0"]
    cmd += ["-f", fmt] if fmt else []
    done = subprocess.run([*cmd, str(path)], capture_output=True, text=True, timeout=30)
    return done.returncode, done.stdout.split()


def expect(kind: str, call: Callable[..., object], *args: object, **kwargs: object) -> MediaError:
    with pytest.raises(MediaError) as info:
        call(*args, **kwargs)
    assert info.value.kind == kind, (info.value.kind, info.value.message)
    assert isinstance(info.value, Error)
    return info.value


@pytest.fixture
def viewer() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


@pytest.fixture
def sealed(h264: Muxed) -> tuple[list[bytes], list[bytes], bytes]:
    parts = chunks(h264)
    key = new_session_key()
    return parts, seal_all(parts, key, session_id()), key


# --- round trip -------------------------------------------------------------------------------------------


def test_real_fmp4_round_trip_decodes(h264: Muxed, tmp_path: Path, viewer: X25519PrivateKey) -> None:
    key = new_session_key()
    wrapped = wrap_key(key, raw_public(viewer), device_id=DEVICE, jti=JTI)
    assert len(wrapped) == WRAPPED_KEY_BYTES == 80
    parts = chunks(h264)
    frames = seal_all(parts, key, session_id())
    # the viewer gets the key from the wrap alone
    opened = open_all(frames, unwrap_key(wrapped, viewer, device_id=DEVICE, jti=JTI), session_id())
    assert opened == h264.data
    out = tmp_path / "received.mp4"
    out.write_bytes(opened)
    codecs, pictures = decode(out)
    assert (codecs, len(pictures)) == ({"h264"}, 150)  # 6 s at 25 fps
    assert ffprobe_video(out) == (0, ["h264,150"])


def test_frame_format_is_as_documented(sealed: tuple[list[bytes], list[bytes], bytes]) -> None:
    """An independent reader written from the docstring opens every frame."""
    parts, frames, key = sealed
    aead = ChaCha20Poly1305(key)
    for seq, (part, frame) in enumerate(zip(parts, frames, strict=True)):
        assert HEADER_BYTES == 34
        header = frame[:34]
        magic, version, flags, sid, frame_seq, length = struct.unpack(">4sBB16sQI", header)
        assert (magic, version, sid, frame_seq, length) == (b"EDGM", 1, session_id(), seq, len(part))
        assert flags == (1 if seq == len(parts) - 1 else 0)
        assert len(frame) == 34 + len(part) + 16
        nonce = bytes(4) + seq.to_bytes(8, "big")
        assert aead.decrypt(nonce, frame[34:], header) == part


def test_empty_final_frame_ends_a_stream() -> None:
    key, sid = new_session_key(), session_id()
    sealer, opener = FrameSealer(key, sid), FrameOpener(key, sid)
    assert opener.open(sealer.seal(b"fragment")) == b"fragment"
    assert not opener.done
    assert opener.open(sealer.seal(b"", final=True)) == b""
    assert opener.done and sealer.done
    opener.finish()


# --- what a relay sees -------------------------------------------------------------------------------------


def test_a_relay_recording_the_bytes_cannot_decode_a_frame(
    h264: Muxed, sealed: tuple[list[bytes], list[bytes], bytes], tmp_path: Path
) -> None:
    parts, frames, _ = sealed
    # positive control: the same tools on the plaintext find the video and its pictures
    plain = tmp_path / "plain.mp4"
    plain.write_bytes(h264.data)
    codecs, originals = decode(plain)
    assert (codecs, len(originals)) == ({"h264"}, 150)
    assert ffprobe_video(plain) == (0, ["h264,150"])
    assert all(resembles(o, originals) for o in originals)
    assert not resembles(np.full_like(originals[0], 128), originals)

    relay = b"".join(frames)
    stripped = b"".join(f[HEADER_BYTES:] for f in frames)  # a relay that drops our headers
    recorded = {"relay.mp4": relay, "relay": relay, "stripped.mp4": stripped, "stripped": stripped}
    recorded |= {f"frame{i}.mp4": frame for i, frame in enumerate(frames)}  # each frame on its own, too
    for name, blob in recorded.items():
        path = tmp_path / name
        path.write_bytes(blob)
        # read as what the stream is, MP4: nothing at all, no box survives sealing
        assert decode(path, "mp4") == (set(), []), name
        assert ffprobe_video(path, "mp4")[0] != 0, name
        # probed: libav's weakest probes (raw H.263, say) now and then take random bytes for a stream and
        # "decode" noise (about one run in sixty); never our codec, never one of our pictures
        codecs, pictures = decode(path)
        assert "h264" not in codecs, name
        assert not any(resembles(p, originals) for p in pictures), name
        rc, streams = ffprobe_video(path)
        assert not any(s.startswith("h264") for s in streams), (name, rc, streams)
        # no trace of the plaintext: no 16-byte window of it appears in what was relayed
        for part in parts:
            for at in range(0, len(part) - 16, 997):
                assert part[at : at + 16] not in blob


def test_every_session_has_a_fresh_key(h264: Muxed, viewer: X25519PrivateKey) -> None:
    parts = chunks(h264)
    key_a, key_b = new_session_key(), new_session_key()
    assert key_a != key_b and len(key_a) == SESSION_KEY_BYTES
    a = seal_all(parts, key_a, session_id())
    b = seal_all(parts, key_b, session_id())  # even the same session id: the key differs
    for fa, fb in zip(a, b, strict=True):
        assert fa[:HEADER_BYTES] == fb[:HEADER_BYTES]
        assert fa[HEADER_BYTES:] != fb[HEADER_BYTES:]
        assert fa[HEADER_BYTES : HEADER_BYTES + 16] != fb[HEADER_BYTES : HEADER_BYTES + 16]
    # and the same key wrapped twice gives two different wraps (fresh HPKE ephemeral key)
    pub = raw_public(viewer)
    assert wrap_key(key_a, pub, device_id=DEVICE, jti=JTI) != wrap_key(key_a, pub, device_id=DEVICE, jti=JTI)


# --- the key wrap ------------------------------------------------------------------------------------------


def test_key_wrap_opens_only_for_its_viewer_device_and_request(viewer: X25519PrivateKey) -> None:
    key = new_session_key()
    wrapped = wrap_key(key, raw_public(viewer), device_id=DEVICE, jti=JTI)
    assert unwrap_key(wrapped, viewer, device_id=DEVICE, jti=JTI) == key
    with pytest.raises(MediaError, match="does not open") as e:
        unwrap_key(wrapped, X25519PrivateKey.generate(), device_id=DEVICE, jti=JTI)
    assert e.value.kind == "key"
    for device_id, jti in (
        ("edge-" + "cd" * 16, JTI),
        (DEVICE, JTI[:-1] + "b"),
        (DEVICE + "x", JTI),
        # the separator is part of the binding: moving a character across it changes the info
        (DEVICE[:-1], DEVICE[-1] + JTI),
    ):
        with pytest.raises(MediaError, match="does not open"):
            unwrap_key(wrapped, viewer, device_id=device_id, jti=jti)


def test_every_altered_bit_of_a_wrapped_key_is_refused(viewer: X25519PrivateKey) -> None:
    wrapped = wrap_key(new_session_key(), raw_public(viewer), device_id=DEVICE, jti=JTI)
    for bit in range(len(wrapped) * 8):
        altered = bytearray(wrapped)
        altered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(MediaError) as e:
            unwrap_key(bytes(altered), viewer, device_id=DEVICE, jti=JTI)
        assert e.value.kind == "key"
    for bad in (wrapped[:-1], wrapped + b"\x00", b""):
        with pytest.raises(MediaError, match="80 bytes"):
            unwrap_key(bad, viewer, device_id=DEVICE, jti=JTI)


def test_key_wrap_refuses_bad_inputs(viewer: X25519PrivateKey) -> None:
    pub, key = raw_public(viewer), new_session_key()
    with pytest.raises(MediaError, match="32 bytes"):
        wrap_key(key[:16], pub, device_id=DEVICE, jti=JTI)
    with pytest.raises(MediaError, match="32 bytes"):
        wrap_key(key, pub[:31], device_id=DEVICE, jti=JTI)
    # low-order points (all zero, the order-8 point): the shared secret would be all zero
    order8 = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
    for point in (bytes(32), bytes([1]) + bytes(31), order8):
        with pytest.raises(MediaError, match="not a usable") as e:
            wrap_key(key, point, device_id=DEVICE, jti=JTI)
        assert e.value.kind == "key"
    for device_id, jti in (("", JTI), (DEVICE, ""), ("edge-a\nb", JTI)):
        with pytest.raises(MediaError, match="newline"):
            wrap_key(key, pub, device_id=device_id, jti=jti)
    with pytest.raises(MediaError, match="not valid text") as bad_text:
        wrap_key(key, pub, device_id=DEVICE, jti="\ud800")
    assert bad_text.value.__context__ is None and bad_text.value.__cause__ is None


# --- interop with a second HPKE implementation ------------------------------------------------------------

PYHPKE = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.CHACHA20_POLY1305)


def test_a_key_wrapped_by_pyhpke_is_unwrapped(viewer: X25519PrivateKey) -> None:
    key = new_session_key()
    pkr = PYHPKE.kem.deserialize_public_key(raw_public(viewer))
    # pyhpke 0.6.5 leaves CipherSuite.seal unimplemented; RFC 9180 defines single-shot SealBase as exactly
    # this: SetupBaseS, then the context's first Seal with empty aad.
    enc, ctx = PYHPKE.create_sender_context(pkr, info=documented_info(DEVICE, JTI))
    wrapped = enc + ctx.seal(key)
    assert unwrap_key(wrapped, viewer, device_id=DEVICE, jti=JTI) == key
    # negative control: pyhpke with other info does not open
    enc, ctx = PYHPKE.create_sender_context(pkr, info=documented_info(DEVICE, JTI + "x"))
    with pytest.raises(MediaError, match="does not open"):
        unwrap_key(enc + ctx.seal(key), viewer, device_id=DEVICE, jti=JTI)


def test_wrap_key_output_is_opened_by_pyhpke(viewer: X25519PrivateKey) -> None:
    key = new_session_key()
    wrapped = wrap_key(key, raw_public(viewer), device_id=DEVICE, jti=JTI)
    skr = PYHPKE.kem.deserialize_private_key(raw_private(viewer))
    ctx = PYHPKE.create_recipient_context(wrapped[:32], skr, info=documented_info(DEVICE, JTI))
    assert ctx.open(wrapped[32:]) == key


# --- what the viewer detects -------------------------------------------------------------------------------


def _opener_at(frames: list[bytes], key: bytes, position: int, sid: bytes | None = None) -> FrameOpener:
    opener = FrameOpener(key, sid or session_id())
    for frame in frames[:position]:
        opener.open(frame)
    return opener


def test_reordered_frames_are_detected(sealed: tuple[list[bytes], list[bytes], bytes]) -> None:
    _, frames, key = sealed
    opener = _opener_at(frames, key, 1)
    err = expect("out_of_order", opener.open, frames[2])
    assert "frame 2" in err.message and "1 was expected" in err.message
    # the stream has failed for good: not even the right frame is taken now
    expect("failed", opener.open, frames[1])
    expect("failed", opener.finish)


def test_a_replayed_frame_is_detected(sealed: tuple[list[bytes], list[bytes], bytes]) -> None:
    _, frames, key = sealed
    opener = _opener_at(frames, key, 2)
    err = expect("replayed", opener.open, frames[1])
    assert "frame 1" in err.message
    opener = _opener_at(frames, key, 1)
    expect("replayed", opener.open, frames[0])


def test_a_dropped_frame_is_detected(sealed: tuple[list[bytes], list[bytes], bytes]) -> None:
    _, frames, key = sealed
    opener = _opener_at(frames, key, 3)
    expect("out_of_order", opener.open, frames[4])
    # dropping the first frame (the init segment)
    expect("out_of_order", FrameOpener(key, session_id()).open, frames[1])


def test_a_truncated_stream_is_detected(sealed: tuple[list[bytes], list[bytes], bytes]) -> None:
    _, frames, key = sealed
    opener = _opener_at(frames, key, len(frames) - 1)
    assert not opener.done
    err = expect("truncated", opener.finish)
    assert "truncated" in err.message
    expect("truncated", FrameOpener(key, session_id()).finish)  # nothing came at all
    # a frame cut short
    opener = _opener_at(frames, key, len(frames) - 1)
    expect("malformed", opener.open, frames[-1][:-1])
    expect("malformed", FrameOpener(key, session_id()).open, frames[0][:49])


def test_nothing_after_the_final_frame(sealed: tuple[list[bytes], list[bytes], bytes]) -> None:
    _, frames, key = sealed
    opener = _opener_at(frames, key, len(frames))
    assert opener.done
    opener.finish()
    expect("after_final", opener.open, frames[-1])
    sealer = FrameSealer(key, session_id())
    sealer.seal(b"last", final=True)
    expect("after_final", sealer.seal, b"more")


def test_another_session_is_refused(sealed: tuple[list[bytes], list[bytes], bytes], h264: Muxed) -> None:
    _, frames, key = sealed
    err = expect("wrong_session", FrameOpener(key, session_id("another jti")).open, frames[0])
    assert "another session" in err.message
    # a frame of another session spliced in, even one that claims our session id, fails its tag
    other = seal_all(chunks(h264), new_session_key(), session_id())
    opener = _opener_at(frames, key, 1)
    expect("tampered", opener.open, other[1])
    # another session key: every frame fails
    expect("tampered", FrameOpener(new_session_key(), session_id()).open, frames[0])


HEADER_KINDS = {"malformed", "wrong_session", "replayed", "out_of_order", "tampered", "too_large"}


def test_every_flipped_header_bit_is_detected(sealed: tuple[list[bytes], list[bytes], bytes]) -> None:
    _, frames, key = sealed
    kinds = set()
    for position in (0, 1, len(frames) - 1):
        frame = frames[position]
        for bit in range(HEADER_BYTES * 8):
            altered = bytearray(frame)
            altered[bit // 8] ^= 0x80 >> (bit % 8)
            opener = _opener_at(frames, key, position)
            with pytest.raises(MediaError) as e:
                opener.open(bytes(altered))
            assert e.value.kind in HEADER_KINDS, (position, bit, e.value.kind)
            kinds.add(e.value.kind)
            # the flags' final bit is only covered by the tag
            if bit == 5 * 8 + 7:
                assert e.value.kind == "tampered"
    assert kinds == HEADER_KINDS


def test_every_flipped_ciphertext_bit_is_detected(sealed: tuple[list[bytes], list[bytes], bytes]) -> None:
    parts, frames, key = sealed
    # the init segment (every bit), and a sample of the bits of a fragment and the final frame
    for position, step in ((0, 1), (1, 61), (len(frames) - 1, 61)):
        frame = frames[position]
        opener = _opener_at(frames, key, position)
        for bit in range(HEADER_BYTES * 8, len(frame) * 8, step):
            altered = bytearray(frame)
            altered[bit // 8] ^= 1 << (bit % 8)
            with pytest.raises(MediaError) as e:
                _opener_at(frames, key, position).open(bytes(altered))
            assert e.value.kind == "tampered"
        assert opener.open(frame) == parts[position]  # the genuine frame still opens


def test_oversized_frames_are_refused() -> None:
    key, sid = new_session_key(), session_id()
    sealer = FrameSealer(key, sid)
    expect("too_large", sealer.seal, bytes(MAX_PAYLOAD_BYTES + 1))
    assert sealer.seq == 0  # nothing was used up
    biggest = sealer.seal(bytes(MAX_PAYLOAD_BYTES))
    assert FrameOpener(key, sid).open(biggest) == bytes(MAX_PAYLOAD_BYTES)
    # a header claiming more than the limit is refused before anything is read
    header = struct.pack(">4sBB16sQI", b"EDGM", 1, 0, sid, 0, MAX_PAYLOAD_BYTES + 1)
    expect("too_large", FrameOpener(key, sid).open, header + bytes(16))


def test_the_sequence_number_never_wraps() -> None:
    key, sid = new_session_key(), session_id()
    sealer, opener = FrameSealer(key, sid), FrameOpener(key, sid)
    # white box: jump to the last sequence number rather than seal 2**64 frames
    sealer._seq = opener._seq = MAX_SEQ
    last = sealer.seal(b"last possible")
    assert struct.unpack(">Q", last[22:30]) == (MAX_SEQ,)
    assert opener.open(last) == b"last possible"
    expect("exhausted", sealer.seal, b"one too many")
    expect("exhausted", sealer.seal, b"", final=True)


def test_bad_keys_and_session_ids_are_refused() -> None:
    for cls in (FrameSealer, FrameOpener):
        with pytest.raises(MediaError, match="32 bytes"):
            cls(bytes(31), session_id())
        with pytest.raises(MediaError, match="16 bytes"):
            cls(new_session_key(), bytes(15))


def test_seal_and_open_throughput_for_64_kib_fragments() -> None:
    key, sid = new_session_key(), session_id()
    payload = bytes(range(256)) * 256  # 64 KiB
    count = 256  # 16 MiB
    sealer, opener = FrameSealer(key, sid), FrameOpener(key, sid)
    t0 = time.perf_counter()
    frames = [sealer.seal(payload) for _ in range(count)]
    t1 = time.perf_counter()
    for frame in frames:
        assert len(opener.open(frame)) == len(payload)
    t2 = time.perf_counter()
    mb = count * len(payload) / 1e6
    # a 20 Mbit/s uplink is 2.5 MB/s; even a loaded Pi must seal and open far faster than that
    assert mb / (t1 - t0) > 25 and mb / (t2 - t1) > 25, (mb / (t1 - t0), mb / (t2 - t1))
