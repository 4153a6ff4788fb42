"""End to end: a box recording the real GStreamer RTSP server, paired with the reference hub over real TLS,
sends what a signed request asks for — and only that — and stops when the owner says so.

Each test mount has its own background colour, so a decoded frame at the hub names the camera it came from.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import av
import av.error
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge import jws
from edge.hub.media import SEALED_FILE, EndRecord
from edge.hub.requests import RequestResult
from edge.uplink import media
from tests.hubworld import request_token
from tests.peers.rtsp_server import RtspPeer
from tests.uplinkworld import Box, HubThread, decoded, make_box

MOUNTS = ("h264_720p", "h265")  # camera 1 red H.264, camera 2 blue H.265; both 1 s GOPs


@pytest.fixture(scope="module")
def world(rtsp_server: RtspPeer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubThread, Box]]:
    root = tmp_path_factory.mktemp("uplink")
    hub = HubThread(root / "hub")
    box = None
    try:
        box = make_box(root / "box", hub, rtsp_server, MOUNTS)
        for cam in (1, 2):  # these tests make more requests than the owner's default 4 per hour
            box.cli("consent", "set", str(cam), "--quota", "100")
        yield hub, box
    finally:
        if box is not None:
            box.daemon.stop()
        hub.close()


def first_fragment(hub: HubThread, result: RequestResult, camera: int, timeout: float = 10) -> int | None:
    assert result.expected is not None
    fut = result.expected.streams[camera].first_fragment
    return hub.call(asyncio.wait_for(asyncio.shield(fut), timeout))


def ended(hub: HubThread, result: RequestResult, camera: int, timeout: float = 10) -> EndRecord:
    assert result.expected is not None
    fut = result.expected.streams[camera].ended
    return hub.call(asyncio.wait_for(asyncio.shield(fut), timeout))


def registered(hub: HubThread, box: Box) -> list[int]:
    """The camera ids the hub's registry holds for the box."""
    reg = hub.state.registry(box.device_id)
    return [c["id"] for c in reg.doc["cameras"]] if reg is not None else []


def wait_registered(hub: HubThread, box: Box, want: list[int], within_s: float = 1.0) -> None:
    deadline = time.monotonic() + within_s
    while registered(hub, box) != want:
        assert time.monotonic() < deadline, registered(hub, box)
        time.sleep(0.02)


def video(result: RequestResult, camera: int) -> Path:
    assert result.expected is not None
    return result.expected.streams[camera].video_path


def test_live_request_brings_each_camera_to_the_hub(world: tuple[HubThread, Box]) -> None:
    hub, box = world
    result = hub.request(box.device_id, [1, 2])
    assert result.accepted, result.decision
    for cam in (1, 2):
        assert first_fragment(hub, result, cam) is not None
    status = box.cli("status").stdout
    assert f"uplink: connected to {hub.hub.url}" in status
    assert f"sending camera 1 (live) for request {result.jti}" in status
    assert f"sending camera 2 (live) for request {result.jti}" in status
    time.sleep(1.5)
    for cam in (1, 2):
        assert hub.call(hub.hub.media.stop(result.session, cam))
    records = {cam: ended(hub, result, cam) for cam in (1, 2)}
    for cam, mount in zip((1, 2), MOUNTS, strict=True):
        frames = decoded(video(result, cam))
        assert len(frames) >= 30, (cam, len(frames))  # >= 1.5 s at 30 fps, from the cached keyframe on
        assert frames[0][0] == 0.0
        assert {clip for _, clip in frames} == {mount}, f"camera {cam} shows {mount} and nothing else"
        assert records[cam].failed is None
    entries = box.audit("session")
    ended_entries = [e for e in entries if e["type"] == "session.ended" and e["request"] == result.jti]
    assert sorted(e["cameras"][0] for e in ended_entries) == [1, 2]
    assert all(e["details"]["reason"] == "hub_closed" and e["details"]["bytes"] > 0 for e in ended_entries)
    holds = [e for e in box.audit("hold") if e["request"] == result.jti]
    assert sorted(e["cameras"][0] for e in holds) == [1, 2]


def test_recorded_request_returns_the_asked_range(world: tuple[HubThread, Box]) -> None:
    hub, box = world
    time.sleep(max(0.0, 6 - (time.time() - box.daemon_started)))
    now = int(time.time())
    from_s, to_s = now - 5, now - 2
    result = hub.request(box.device_id, [1], "recorded", from_s=from_s, to_s=to_s)
    assert result.accepted, result.decision
    record = ended(hub, result, 1, timeout=30)
    assert record.complete and record.box_end is not None and record.box_end["reason"] == "complete"
    assert record.start_ms is not None
    frames = decoded(video(result, 1))
    assert {clip for _, clip in frames} == {"h264_720p"}
    first_ms = record.start_ms
    last_ms = record.start_ms + frames[-1][0] * 1000
    assert from_s * 1000 - 1000 - 100 <= first_ms <= from_s * 1000, "first frame at most one GOP before from"
    assert abs(last_ms - to_s * 1000) <= 1000, "last frame within 1 s of to"


def test_max_dur_ends_a_live_session(world: tuple[HubThread, Box]) -> None:
    hub, box = world
    result = hub.request(box.device_id, [2], max_dur=2)
    assert result.accepted, result.decision
    t0 = time.monotonic()
    record = ended(hub, result, 2)
    assert record.box_end is not None and record.box_end["reason"] == "max_dur" and record.complete
    assert 1.5 <= time.monotonic() - t0 <= 3.5


@pytest.mark.parametrize("how", ["killswitch", "withdrawn"])
def test_the_owner_ends_a_live_session_within_a_second(world: tuple[HubThread, Box], how: str) -> None:
    hub, box = world
    result = hub.request(box.device_id, [1])
    assert result.accepted, result.decision
    first_fragment(hub, result, 1)
    assert result.expected is not None
    stream = result.expected.streams[1]
    ended_ns: list[int] = []  # when the hub saw the stream end (wall clock, like the audit log's times)

    async def note_the_end() -> None:
        stream.ended.add_done_callback(lambda _f: ended_ns.append(time.time_ns()))

    hub.call(note_the_end())
    if how == "killswitch":
        box.cli("killswitch")
        action = [e for e in box.audit("killswitch") if e["details"].get("engaged")][-1]
    else:
        box.cli("consent", "withdraw", "1")
        action = box.audit("consent.changed")[-1]
        # … and the hub's registry no longer lists it, at once.
        wait_registered(hub, box, [2])
    try:
        record = ended(hub, result, 1, timeout=5)
        # From the moment the owner's change was committed (its audit entry) to the end at the hub.
        took = (ended_ns[0] - int(action["time"])) / 1e9
        print(f"session ended {took * 1000:.0f} ms after the owner's {how}")
        assert record.box_end is not None and record.box_end["reason"] == how and record.complete
        assert took <= 1.0, f"the session ended {took:.2f} s after the owner's {how}"
        again = hub.request(box.device_id, [1])
        assert not again.accepted and again.code == (
            "killswitch" if how == "killswitch" else "no_such_camera"
        )
        time.sleep(0.3)
        assert not (again.directory / "1").exists(), "a refused request opens no media connection"
        refusals = [e for e in box.audit("request.refused") if e["request"] == again.jti]
        assert [e["details"]["code"] for e in refusals] == [again.code]
    finally:
        if how == "killswitch":
            box.cli("killswitch", "--release")
        else:
            box.cli("consent", "set", "1", "--level", "integrated")
    if how == "withdrawn":  # the registry the hub holds no longer lists it … and lists it again
        wait_registered(hub, box, [1, 2])


def test_every_session_is_logged_and_the_log_is_cosigned(world: tuple[HubThread, Box]) -> None:
    hub, box = world
    result = hub.request(box.device_id, [2], max_dur=1)
    ended(hub, result, 2)
    time.sleep(0.5)
    assert box.cli("audit", "verify").stdout.startswith("OK:")
    with sqlite3.connect(box.data / "edge.db") as db:
        cosigned = db.execute("SELECT COUNT(*), MIN(verified) FROM audit_cosignatures").fetchone()
    assert cosigned[0] >= 2 and cosigned[1] == 1, "checkpoints at session start and end, cosigned, verified"
    assert len(hub.state.cosignatures(box.device_id)) >= 2


def test_a_notice_is_answered_by_the_owner_with_a_share(world: tuple[HubThread, Box]) -> None:
    """A request for a registered camera is refused (not_integrated) and becomes a notice with the officer,
    case and reason; the owner answers it with a clip of their choosing, sent like any session."""
    hub, box = world
    box.cli("consent", "set", "2", "--level", "registered")
    try:
        result = hub.request(box.device_id, [2])
        assert not result.accepted and result.code == "not_integrated"
        notices = json.loads(box.cli("requests", "--notices", "--json").stdout)
        (notice,) = [n for n in notices if n["jti"] == result.jti]
        assert (notice["officer"], notice["case"], notice["reason"]) == (
            "PC 4512",
            "2026/0042",
            "crime_in_progress",
        )
        # The hint uses --request=JTI: a jti is base64url and may start with "-", which argparse would
        # take for an option after a space (seen in CI).
        assert f"edge share --request={result.jti} --camera 2" in box.cli("requests", "--notices").stdout

        wrong = box.cli(
            "share", f"--request={result.jti}", "--camera", "1", "--from", "-4s", "--to", "-1s", check=False
        )
        assert wrong.returncode != 0 and "is not a notice for camera 1" in wrong.stderr
        unknown = box.cli(
            "share", "--request=nope", "--camera", "2", "--from", "-4s", "--to", "-1s", check=False
        )
        assert unknown.returncode != 0 and "no request nope" in unknown.stderr

        out = box.cli(
            "share", f"--request={result.jti}", "--camera", "2", "--from", "-4s", "--to", "-1s"
        ).stdout
        assert "Metropolitan Police" in out
        record = ended(hub, result, 2, timeout=30)
        assert record.complete and record.box_end is not None and record.box_end["reason"] == "complete"
        assert {clip for _, clip in decoded(video(result, 2))} == {"h265"}
        started = [e for e in box.audit("session.started") if e["request"] == result.jti]
        assert [e["details"]["mode"] for e in started] == ["share"]
        holds = [e for e in box.audit("hold.placed") if e["request"] == result.jti]
        assert [e["details"]["reason"] for e in holds] == ["share"]
    finally:
        box.cli("consent", "set", "2", "--level", "integrated")


def sealed_records(path: Path) -> list[bytes]:
    data, out, at = path.read_bytes(), [], 0
    while at < len(data):
        n = int.from_bytes(data[at : at + 4], "big")
        out.append(data[at + 4 : at + 4 + n])
        at += 4 + n
    return out


def test_what_crosses_the_wire_is_opaque_and_every_session_has_its_own_key(
    world: tuple[HubThread, Box],
) -> None:
    """A relay between the box and the viewer (the hub's transport, with TLS stripped) sees the session header
    and sealed frames only: not one frame decodes, the key does not open with any other viewer key, and two
    sessions of the same camera share no key and no ciphertext."""
    hub, box = world
    seen = []
    for _ in range(2):
        result = hub.request(box.device_id, [1])
        assert result.accepted, result.decision
        first_fragment(hub, result, 1)
        time.sleep(0.3)
        hub.call(hub.hub.media.stop(result.session, 1))
        ended(hub, result, 1)
        assert result.expected is not None
        records = sealed_records(result.expected.streams[1].directory / SEALED_FILE)
        header, frames = json.loads(records[0]), records[1:]
        opened = video(result, 1).read_bytes()
        assert len(frames) >= 3 and sum(len(f) - media.HEADER_BYTES - media.TAG_BYTES for f in frames) == len(
            opened
        )
        seen.append((header, frames, opened))
        relay = b"".join(frames)
        for box_type in (b"ftyp", b"moov", b"moof", b"mdat", b"avcC"):
            assert box_type not in relay, f"{box_type!r} in the clear on the wire"
        with pytest.raises(av.error.FFmpegError), av.open(io.BytesIO(relay), "r") as c:  # no video in it
            list(c.decode(video=0))
        wrapped = jws.b64url_decode(header["wrapped_key"])
        assert wrapped is not None
        with pytest.raises(media.MediaError):
            media.unwrap_key(wrapped, X25519PrivateKey.generate(), device_id=box.device_id, jti=result.jti)
    (h1, f1, o1), (h2, f2, o2) = seen
    assert h1["wrapped_key"] != h2["wrapped_key"]
    assert o1[:200] == o2[:200], "both start with the same init segment (ftyp + moov)..."
    assert f1[0][media.HEADER_BYTES :] != f2[0][media.HEADER_BYTES :], "...sealed under different keys"
    assert not set(f1) & set(f2)


def test_rotated_hub_keys_reach_the_box_at_once_and_a_retired_key_is_refused(
    world: tuple[HubThread, Box],
) -> None:
    hub, box = world
    old = hub.state.current_kids()[0]

    async def rotate() -> list[str]:
        await asyncio.to_thread(hub.state.rotate_keys, add=1, retire=[old], now_utc_ns=time.time_ns())
        return await hub.hub.control.push_keyset()

    assert hub.call(rotate()) == [box.device_id]
    version = hub.state.keyset_claims()["version"]
    deadline = time.monotonic() + 15
    while not [e for e in box.audit("hub.keys.changed") if e["details"].get("version") == version]:
        assert time.monotonic() < deadline, box.audit("hub.keys.changed")
        time.sleep(0.1)
    fresh = hub.request(box.device_id, [2], max_dur=1)  # signed with the new key
    assert fresh.accepted, fresh.decision
    ended(hub, fresh, 2)

    async def with_retired_key() -> dict[str, object]:
        nonce = await hub.hub.control.ask_nonce(box.device_id)
        token = request_token(hub.state, box.device_id, nonce, kid=old)
        return await hub.hub.control.send_request(box.device_id, token)

    decision = hub.call(with_retired_key())
    assert (decision["decision"], decision["code"]) == ("refused", "unknown_key")


def test_a_box_stopping_ends_its_sessions_cleanly(world: tuple[HubThread, Box]) -> None:
    hub, box = world
    result = hub.request(box.device_id, [1])
    assert result.accepted, result.decision
    first_fragment(hub, result, 1)
    assert box.daemon.stop() == 0
    try:
        record = ended(hub, result, 1, timeout=20)
        assert record.complete and record.box_end is not None and record.box_end["reason"] == "box_stopping"
        (entry,) = [e for e in box.audit("session.ended") if e["request"] == result.jti]
        assert entry["details"]["reason"] == "box_stopping"
    finally:
        box.daemon.start(wait_recording=len(MOUNTS))
