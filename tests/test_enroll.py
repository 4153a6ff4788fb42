"""Pairing a box with the reference hub, end to end over real TLS 1.3 on 127.0.0.1 (edge/uplink/enroll.py,
pairing.py, paircli.py against edge/hub/server.py): what is pinned, what is logged, and every refusal leaving
nothing behind.

The hub runs in-process on its own event loop thread (aiohttp on a real socket); `edge pair` runs through
the real CLI entry point. One test runs `edge hub keygen|enroll-code|serve` as processes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from edge import cli, jws
from edge.audit import AuditLog
from edge.auditverify import verify_log
from edge.hub import ca, server
from edge.hub.state import HubState
from edge.identity import DeviceIdentity, load_or_create, load_public
from edge.store import Store
from edge.uplink import pairing
from edge.uplink.enroll import EnrollError, make_code, make_csr, parse_code, parse_response, trust_context
from edge.uplink.request import sign_token, verify_token
from tests.harness import EDGE, write_config

NOW_NS = time.time_ns()


class HubLoop:
    """An event loop on a thread, serving hubs until the module ends."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hub", daemon=True)
        self.thread.start()
        self.running: list[server.RunningHub] = []

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def serve(self, state: HubState, ctx: ssl.SSLContext) -> server.RunningHub:
        hub: server.RunningHub = self.run(server.start(state, host="127.0.0.1", port=0, ssl_context=ctx))
        self.running.append(hub)
        return hub

    def close(self) -> None:
        for hub in self.running:
            self.run(hub.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


@dataclass
class Hub:
    state: HubState
    url: str

    def code(self, *, ttl_s: int = 600, now_ns: int | None = None, root: str | None = None) -> str:
        token = self.state.issue_token(ttl_s=ttl_s, now_utc_ns=now_ns or time.time_ns())
        return make_code(self.url, token, root or self.state.root_fingerprint)

    @property
    def fingerprint(self) -> str:
        return self.state.keyset_fingerprint()


def _context_for(state: HubState, names: list[str], *, issuer: HubState | None = None) -> ssl.SSLContext:
    """The hub's TLS server context; ``issuer``: whose root signs the server certificate (another CA)."""
    cert, key = (issuer or state).write_server_cert(names, now_utc_ns=time.time_ns())
    return server.server_context(cert, key, state.root_pem)


@pytest.fixture(scope="module")
def hubs() -> Iterator[HubLoop]:
    loop = HubLoop()
    try:
        yield loop
    finally:
        loop.close()


def _new_hub(hubs: HubLoop, tmp: Path, hub_id: str, agency: str, **kw: Any) -> Hub:
    state = HubState.create(tmp, hub_id=hub_id, agency=agency, now_utc_ns=NOW_NS)
    running = hubs.serve(state, _context_for(state, ["127.0.0.1"], **kw))
    return Hub(state, running.url)


@pytest.fixture(scope="module")
def hub(hubs: HubLoop, tmp_path_factory: pytest.TempPathFactory) -> Hub:
    return _new_hub(hubs, tmp_path_factory.mktemp("hub"), "met-hub-1", "Metropolitan Police")


@dataclass
class Box:
    data: Path
    config: Path

    def edge(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = cli.main(["--config", str(self.config), *args])
        out = capsys.readouterr()
        return rc, out.out, out.err

    def pairing(self) -> pairing.Pairing | None:
        store = Store.open(self.data)
        try:
            return pairing.load(store)
        finally:
            store.close()

    def audit_types(self) -> list[str]:
        store = Store.open(self.data)
        try:
            return [e.type for e in AuditLog(store).entries()]
        finally:
            store.close()

    def assert_nothing_pinned(self) -> None:
        assert self.pairing() is None
        assert not (self.data / pairing.CLIENT_KEY_NAME).exists()
        assert self.audit_types() == []


@pytest.fixture
def box(tmp_path: Path) -> Box:
    data = tmp_path / "box"
    return Box(data, write_config(tmp_path / "edge.toml", data))


def _one_line(err: str) -> str:
    assert err.startswith("edge: ") and err.endswith("\n") and err.count("\n") == 1, err
    return err


# --- pairing that works -------------------------------------------------------------------------------------


def test_pairing_end_to_end_pins_logs_and_verifies(
    hub: Hub, box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = time.perf_counter()
    rc, out, err = box.edge(capsys, "pair", hub.code(), "--confirm-fingerprint", hub.fingerprint.upper())
    took = time.perf_counter() - t0
    assert (rc, err) == (0, ""), err
    assert took < 5
    device_id = load_public(box.data).device_id
    state = hub.state

    # What the owner sees: agency, hub id, key fingerprints, terms version and SHA-256; never the private key.
    assert "paired with Metropolitan Police (hub met-hub-1)" in out
    assert hub.fingerprint in out and state.terms.sha256 in out and state.terms.version in out
    assert state.root_fingerprint in out and device_id in out
    for kid in state.current_kids():
        assert kid in out
    key_pem = (box.data / pairing.CLIENT_KEY_NAME).read_bytes()
    assert b"PRIVATE KEY" not in out.encode() and key_pem.split(b"\n")[1] not in out.encode()

    # What is pinned.
    paired = box.pairing()
    assert paired is not None
    assert (paired.hub_id, paired.agency, paired.hub_url) == ("met-hub-1", "Metropolitan Police", hub.url)
    assert paired.root_pem == state.root_pem and paired.root_fingerprint == state.root_fingerprint
    assert paired.keyset.jws == state.keyset() and paired.keyset.fingerprint == hub.fingerprint
    assert paired.keyset.version == 1 and list(paired.keyset.keys) == state.current_kids()
    assert paired.terms == state.terms

    # The TLS client key: 0600, P-256, matching the client certificate the hub's root issued for this device.
    assert stat.S_IMODE((box.data / pairing.CLIENT_KEY_NAME).stat().st_mode) == 0o600
    key = load_pem_private_key(key_pem, password=None)
    cert = x509.load_pem_x509_certificate(paired.client_cert_pem.encode())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(state.root)
    assert cert.subject.rfc4514_string() == f"CN={device_id}"

    # The hub knows the device by its device key.
    device = state.device(device_id)
    assert device is not None and device.device_key == load_public(box.data).public_key
    assert device.client_cert == paired.client_cert_pem

    # The audit log says so, and verifies.
    store = Store.open(box.data)
    try:
        log = AuditLog(store)
        entries = log.entries()
        assert [e.type for e in entries] == ["pairing.completed", "hub.keys.changed"]
        assert entries[0].actor.startswith("cli:")
        assert entries[0].details == {
            "hub_id": "met-hub-1",
            "agency": "Metropolitan Police",
            "hub_url": hub.url,
            "root_sha256": state.root_fingerprint,
            "keyset_fingerprint": hub.fingerprint,
            "keyset_version": 1,
            "terms_version": state.terms.version,
            "terms_sha256": state.terms.sha256,
            "replaced_hub_id": None,
        }
        assert entries[1].details["fingerprint"] == hub.fingerprint
        assert entries[1].details["kids"] == state.current_kids()
        assert verify_log(log, load_public(box.data)).ok
    finally:
        store.close()

    # The pinned keys verify a request the hub signs (the verifier's HubKeys come from the pairing).
    (kid,) = state.current_kids()
    claims = _request_claims(device_id)
    request = verify_token(
        sign_token(claims, kid=kid, key=state.signing_key(kid)),
        hub=paired.hub_keys(),
        device_id=device_id,
        now_s=claims["iat"],
    )
    assert request.iss == "met-hub-1"

    # `edge pairing --json` and `edge pair --status` show the same pairing.
    rc, out, _ = box.edge(capsys, "pairing", "--json")
    info = json.loads(out)
    assert rc == 0 and info["paired"] and info["hub_id"] == "met-hub-1"
    assert info["keyset"]["fingerprint"] == hub.fingerprint and info["terms"]["sha256"] == state.terms.sha256
    rc, out, _ = box.edge(capsys, "pair", "--status")
    assert rc == 0 and "met-hub-1" in out and hub.fingerprint in out


def test_the_client_certificate_authenticates_the_box_to_the_hub(hub: Hub, box: Box) -> None:
    assert (
        cli.main(["--config", str(box.config), "pair", hub.code(), "--confirm-fingerprint", hub.fingerprint])
        == 0
    )
    paired = box.pairing()
    assert paired is not None
    with_cert = pairing.client_ssl_context(box.data, paired)
    anonymous = trust_context(paired.root_pem)

    async def who(ctx: ssl.SSLContext) -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s,
            s.get(hub.url + "/v1/device") as r,
        ):
            return r.status, await r.json()

    status, body = asyncio.run(who(with_cert))
    assert (status, body) == (200, {"device_id": load_public(box.data).device_id, "enrolled": True})
    status, body = asyncio.run(who(anonymous))
    assert status == 401 and body["error"] == "no_client_cert"

    (box.data / pairing.CLIENT_KEY_NAME).chmod(0o640)
    with pytest.raises(pairing.PairingError, match="chmod 600"):
        pairing.client_ssl_context(box.data, paired)


def test_the_hub_serve_command_pairs_a_box(
    tmp_path: Path, box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    hub_dir = tmp_path / "hubdir"
    terms = tmp_path / "terms.txt"
    terms.write_text("Our programme's terms.\nLine two: é\n", encoding="utf-8")
    run = [*EDGE, "hub"]
    keygen = subprocess.run(
        [*run, "keygen", "--data", str(hub_dir), "--agency", "Kent Police", "--hub-id", "kent-1",
         "--terms", str(terms), "--terms-version", "2026.1"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert "kent-1" in keygen.stdout
    with subprocess.Popen(
        [*run, "serve", "--data", str(hub_dir), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline(), proc.stdout.readline()]
            assert lines[1].startswith("listening on https://127.0.0.1:"), lines
            url = lines[1].split()[-1]
            made = subprocess.run(
                [*run, "enroll-code", "--data", str(hub_dir), "--url", url, "--ttl", "10m", "--json"],
                capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            code = json.loads(made.stdout)
            rc, out, err = box.edge(
                capsys, "pair", code["code"], "--confirm-fingerprint", code["keyset_fingerprint"]
            )
            assert (rc, err) == (0, "")
            assert "paired with Kent Police (hub kent-1)" in out and "version 2026.1" in out
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
    paired = box.pairing()
    assert paired is not None and paired.terms.text == "Our programme's terms.\nLine two: é\n"
    assert paired.terms.version == "2026.1"


# --- refusals: nothing stored -------------------------------------------------------------------------------


def test_a_wrong_root_fingerprint_in_the_code_is_refused_before_enrolling(
    hub: Hub, box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    code = parse_code(hub.code())
    wrong = make_code(code.hub, code.token, "0" * 64)
    rc, _out, err = box.edge(capsys, "pair", wrong, "--confirm-fingerprint", hub.fingerprint)
    assert rc == 1 and hub.state.root_fingerprint in _one_line(err) and "0" * 64 in err
    box.assert_nothing_pinned()
    # The hub was never asked to enroll: the same token still works with the right code.
    right = make_code(code.hub, code.token, hub.state.root_fingerprint)
    assert box.edge(capsys, "pair", right, "--confirm-fingerprint", hub.fingerprint)[0] == 0


def test_a_hub_certificate_from_another_ca_fails_tls(
    hubs: HubLoop, hub: Hub, tmp_path: Path, box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    """root.pem is the right root, but the server's certificate is issued by another CA (an impostor in
    between that serves the real root): the enroll call fails TLS, and the token is not spent."""
    other = HubState.create(tmp_path / "other", hub_id="x", agency="x", now_utc_ns=NOW_NS)
    impostor = hubs.serve(hub.state, _context_for(hub.state, ["127.0.0.1"], issuer=other))
    token = hub.state.issue_token(ttl_s=600, now_utc_ns=time.time_ns())
    code = make_code(impostor.url, token, hub.state.root_fingerprint)
    rc, _out, err = box.edge(capsys, "pair", code, "--confirm-fingerprint", hub.fingerprint)
    assert rc == 1 and "TLS" in _one_line(err) and "not issued by the pinned root" in err
    box.assert_nothing_pinned()
    assert box.edge(capsys, "pair", make_code(hub.url, token, hub.state.root_fingerprint),
                    "--confirm-fingerprint", hub.fingerprint)[0] == 0  # fmt: skip


def test_a_certificate_for_another_host_name_fails_tls(
    hubs: HubLoop, hub: Hub, box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong_name = hubs.serve(hub.state, _context_for(hub.state, ["hub.example"]))
    code = make_code(wrong_name.url, hub.state.issue_token(ttl_s=600, now_utc_ns=time.time_ns()),
                     hub.state.root_fingerprint)  # fmt: skip
    rc, _out, err = box.edge(capsys, "pair", code, "--confirm-fingerprint", hub.fingerprint)
    assert rc == 1 and "TLS" in _one_line(err) and "mismatch" in err
    box.assert_nothing_pinned()


def test_a_reused_code_is_refused_token_used(
    hub: Hub, box: Box, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = hub.code()
    assert box.edge(capsys, "pair", code, "--confirm-fingerprint", hub.fingerprint)[0] == 0
    second = Box(tmp_path / "box2", write_config(tmp_path / "e2.toml", tmp_path / "box2"))
    rc, _out, err = second.edge(capsys, "pair", code, "--confirm-fingerprint", hub.fingerprint)
    assert rc == 1 and "token_used" in _one_line(err) and "new one" in err
    second.assert_nothing_pinned()


def test_an_expired_or_unknown_token_is_refused(
    hub: Hub, box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    old = hub.code(ttl_s=60, now_ns=time.time_ns() - 120 * 10**9)
    rc, _out, err = box.edge(capsys, "pair", old, "--confirm-fingerprint", hub.fingerprint)
    assert rc == 1 and "token_expired" in _one_line(err)
    unknown = make_code(hub.url, jws.b64url_encode(os.urandom(16)), hub.state.root_fingerprint)
    rc, _out, err = box.edge(capsys, "pair", unknown, "--confirm-fingerprint", hub.fingerprint)
    assert rc == 1 and "bad_token" in _one_line(err)
    box.assert_nothing_pinned()


def test_a_wrong_confirmed_fingerprint_pins_nothing_but_spends_the_code(
    hub: Hub, box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    code = hub.code()
    wrong = "ab" * 32
    rc, out, err = box.edge(capsys, "pair", code, "--confirm-fingerprint", wrong)
    assert rc == 1 and out == ""
    assert hub.fingerprint in _one_line(err) and wrong in err and "nothing was pinned" in err
    box.assert_nothing_pinned()
    # The hub enrolled the device (it answered before the owner's check); the box is not paired.
    device_id = load_public(box.data).device_id
    assert hub.state.device(device_id) is not None
    rc, out, _ = box.edge(capsys, "pairing")
    assert rc == 0 and "not paired" in out
    # The owner needs a new code.
    rc, _out, err = box.edge(capsys, "pair", code, "--confirm-fingerprint", hub.fingerprint)
    assert rc == 1 and "token_used" in err
    assert box.edge(capsys, "pair", hub.code(), "--confirm-fingerprint", hub.fingerprint)[0] == 0


def test_already_paired_is_refused_without_replace(
    hubs: HubLoop, hub: Hub, box: Box, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert box.edge(capsys, "pair", hub.code(), "--confirm-fingerprint", hub.fingerprint)[0] == 0
    key_before = (box.data / pairing.CLIENT_KEY_NAME).read_bytes()
    kent = _new_hub(hubs, tmp_path / "kent", "kent-1", "Kent Police")
    code = kent.code()
    rc, _out, err = box.edge(capsys, "pair", code, "--confirm-fingerprint", kent.fingerprint)
    assert rc == 1 and "already paired with Metropolitan Police" in _one_line(err) and "--replace" in err
    paired = box.pairing()
    assert paired is not None and paired.hub_id == "met-hub-1"
    assert (box.data / pairing.CLIENT_KEY_NAME).read_bytes() == key_before
    assert kent.state.devices() == []  # refused before asking the hub: the code is still good

    identity_before = load_public(box.data)
    rc, out, err = box.edge(capsys, "pair", code, "--confirm-fingerprint", kent.fingerprint, "--replace")
    assert (rc, err) == (0, "") and "paired with Kent Police (hub kent-1)" in out
    paired = box.pairing()
    assert paired is not None and paired.hub_id == "kent-1" and paired.root_pem == kent.state.root_pem
    assert (box.data / pairing.CLIENT_KEY_NAME).read_bytes() != key_before
    assert load_public(box.data) == identity_before  # pairing never replaces the device key
    store = Store.open(box.data)
    try:
        entries = AuditLog(store).entries(types=["pairing"])
    finally:
        store.close()
    assert [e.details["replaced_hub_id"] for e in entries] == [None, "met-hub-1"]


# --- codes and arguments ------------------------------------------------------------------------------------


def _raw_code(obj: Any) -> str:
    return "edge-enroll:v1:" + base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


GOOD = {"hub": "https://hub.example:8443", "token": jws.b64url_encode(bytes(16)), "root": "a" * 64}


@pytest.mark.parametrize(
    ("code", "why"),
    [
        ("edge-enroll:1:https://hub:tok:" + "a" * 64, "must start with edge-enroll:v1:"),
        ("hello", "must start with edge-enroll:v1:"),
        ("edge-enroll:v1:", "does not hold a JSON object"),
        ("edge-enroll:v1:eyJodWIi=", "not base64url"),
        ("edge-enroll:v1:e30+", "not base64url"),
        ("edge-enroll:v1:" + "A" * 5000, "too long"),
        (_raw_code([1, 2]), "does not hold a JSON object"),
        (_raw_code({**GOOD, "hub": 5}), "hub is not a URL"),
        (_raw_code({"hub": GOOD["hub"], "token": GOOD["token"]}), "lacks root"),
        (_raw_code({"root": GOOD["root"]}), "lacks hub, token"),
        (_raw_code({**GOOD, "x": 1}), "unknown field"),
        (_raw_code({**GOOD, "hub": "http://hub.example"}), "https://"),
        (_raw_code({**GOOD, "hub": "https://"}), "host name"),
        (_raw_code({**GOOD, "hub": "https://u:p@hub.example"}), "no user or password"),
        (_raw_code({**GOOD, "hub": "https://hub.example/?a=1"}), "query"),
        (_raw_code({**GOOD, "hub": "https://hub.example:99999"}), "bad port"),
        (_raw_code({**GOOD, "token": jws.b64url_encode(bytes(15))}), "16+ bytes"),
        (_raw_code({**GOOD, "token": GOOD["token"] + "="}), "16+ bytes"),
        (_raw_code({**GOOD, "root": "a" * 63}), "root is not a hex"),
        (_raw_code({**GOOD, "root": "g" * 64}), "root is not a hex"),
    ],
)
def test_malformed_codes_give_one_clear_line(code: str, why: str) -> None:
    with pytest.raises(EnrollError, match=why.replace("+", r"\+").replace("?", r"\?")) as e:
        parse_code(code)
    assert "\n" not in e.value.message and e.value.message.isprintable()


def test_a_good_code_round_trips() -> None:
    code = parse_code("  " + make_code("https://hub.example:8443/", GOOD["token"], "A" * 64) + "\n")
    assert (code.hub, code.token, code.root) == ("https://hub.example:8443", GOOD["token"], "a" * 64)
    assert code.token not in repr(code)
    raw = make_code("https://hub.example", GOOD["token"], "a" * 64)
    payload = jws.b64url_decode(raw.removeprefix("edge-enroll:v1:"))
    assert payload == rfc8785.dumps({"hub": "https://hub.example", "token": GOOD["token"], "root": "a" * 64})


def test_the_cli_refuses_bad_codes_and_arguments_before_touching_anything(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _out, err = box.edge(
        capsys, "pair", _raw_code({**GOOD, "hub": "http://x"}), "--confirm-fingerprint", "a" * 64
    )
    assert rc == 1 and "https://" in _one_line(err)
    rc, _out, err = box.edge(capsys, "pair", _raw_code(GOOD))
    assert rc == 2 and "--confirm-fingerprint" in _one_line(err)
    rc, _out, err = box.edge(capsys, "pair", _raw_code(GOOD), "--confirm-fingerprint", "abc")
    assert rc == 2 and "64 hex digits" in _one_line(err)
    assert not box.data.exists()


# --- the box checks what the hub answers --------------------------------------------------------------------


def test_the_box_checks_every_member_of_the_hub_answer(hub: Hub, tmp_path: Path) -> None:
    identity = load_or_create(tmp_path / "b")
    device_id = identity.public.device_id
    tls_key = ec.generate_private_key(ec.SECP256R1())
    now_s = int(time.time())
    cert = ca.pem(ca.issue_client(hub.state.root_key(), hub.state.root, make_csr(tls_key, device_id),
                                  device_id=device_id, now=_now()))  # fmt: skip
    good = {
        "hub_id": hub.state.hub_id,
        "agency": hub.state.agency,
        "client_cert": cert,
        "keyset": hub.state.keyset(),
        "terms": {"version": "v1", "text": "terms"},
    }

    def parse(
        body: dict[str, Any], *, key: ec.EllipticCurvePrivateKey = tls_key, device: str = device_id
    ) -> Any:
        return parse_response(json.dumps(body).encode(), hub_url=hub.url, root_pem=hub.state.root_pem,
                              device_id=device, tls_key=key, now_s=now_s)  # fmt: skip

    enrollment = parse(good)
    assert enrollment.keyset.fingerprint == hub.fingerprint and enrollment.terms.version == "v1"
    other = HubState.create(tmp_path / "other", hub_id="other", agency="Other", now_utc_ns=NOW_NS)
    foreign = ca.pem(ca.issue_client(other.root_key(), other.root, make_csr(tls_key, device_id),
                                     device_id=device_id, now=_now()))  # fmt: skip
    cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "extra": 1}, "unknown member"),
        ({k: v for k, v in good.items() if k != "terms"}, "lacks terms"),
        ({**good, "client_cert": foreign}, "not issued by its root"),
        ({**good, "client_cert": cert + cert}, "exactly one"),
        ({**good, "client_cert": "junk"}, "not a PEM"),
        ({**good, "hub_id": "other"}, "wrong_hub"),
        ({**good, "keyset": other.keyset()}, "wrong_hub"),
        ({**good, "keyset": hub.state.keyset()[:-3] + "AAA"}, "bad_signature"),
        ({**good, "agency": "Met\x1b[31m"}, "agency"),
        ({**good, "terms": {"version": "v1"}}, "terms"),
        ({**good, "terms": {"version": "", "text": "t"}}, "terms version"),
        ({**good, "terms": {"version": "v1", "text": ""}}, "terms text"),
    ]
    for body, why in cases:
        with pytest.raises(EnrollError, match=why):
            parse(body)
    with pytest.raises(EnrollError, match="not for the key this box sent"):
        parse(good, key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(EnrollError, match="not for this device"):
        parse(good, device=DeviceIdentity(Ed25519PrivateKey.generate()).public.device_id)
    with pytest.raises(EnrollError, match="not a JSON object"):
        parse_response(
            b"[]",
            hub_url=hub.url,
            root_pem=hub.state.root_pem,
            device_id=device_id,
            tls_key=tls_key,
            now_s=now_s,
        )


def test_the_hub_refuses_a_bad_enroll_body_without_spending_the_token(hub: Hub) -> None:
    ctx = trust_context(hub.state.root_pem)
    token = hub.state.issue_token(ttl_s=600, now_utc_ns=time.time_ns())

    async def post(body: bytes) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s,
            s.post(hub.url + "/v1/enroll", data=body) as r,
        ):
            return r.status, await r.json()

    bodies = [
        b"{",
        b'{"request": 1}',
        b'{"request": "a.b.c", "extra": 1}',
        json.dumps(
            {
                "request": jws.sign(
                    {"token": token}, typ="edge-enroll+jwt", kid="device", key=Ed25519PrivateKey.generate()
                )
            }
        ).encode(),
        b'{"request": "' + b"x" * 70000 + b'"}',
    ]
    before = hub.state.devices()
    for body in bodies:
        status, answer = asyncio.run(post(body))
        assert status == 400 and answer["error"] == "bad_request", (body[:40], answer)
    assert hub.state.devices() == before  # nothing recorded for these
    # The token is still unused.
    hub.state.enroll(token, device_id="edge-probe", device_key=bytes(32), client_cert="c", box_version="1",
                     now_utc_ns=time.time_ns())  # fmt: skip


def _now() -> datetime:
    return datetime.now(UTC)


def _request_claims(device_id: str) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": "met-hub-1",
        "aud": device_id,
        "jti": jws.b64url_encode(os.urandom(16)),
        "iat": now,
        "nbf": now,
        "exp": now + 120,
        "sub": "PC 4512",
        "case": "2026/0042",
        "reason": "crime_in_progress",
        "scope": {"cameras": [1], "mode": "live"},
        "max_dur": 600,
        "incident": {"lat": 51.5, "lon": -0.14, "kind": "robbery"},
        "viewer_key": jws.b64url_encode(os.urandom(32)),
        "dev_nonce": "n",
    }
