"""The emergency request verifier (edge/uplink/request.py): every refusal with its exact code, on real tokens.

Tokens are signed for real (Ed25519 from ``cryptography``), so each test breaks exactly one thing; joserfc, a
second implementation, is the positive control both ways; hypothesis mutates valid tokens.
"""

from __future__ import annotations

import base64
import itertools
import json
import warnings
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edge.errors import Error
from edge.uplink.claims import AccessRequest, Incident, Scope
from edge.uplink.request import CODES, HubKeys, Refused, sign_token, verify_token

NOW = 1_700_000_000
DEVICE = "edge-" + "ab" * 16
HUB_ID = "hub-test.example"


def _ed_key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


HUB_SK = _ed_key(1)
NEXT_SK = _ed_key(2)  # a second current key: rotation keeps two
OLD_SK = _ed_key(3)  # revoked
STRANGER_SK = _ed_key(4)  # never pinned
HUB = HubKeys(
    hub_id=HUB_ID,
    keys={
        "k1": _raw_public(HUB_SK),
        "k2": _raw_public(NEXT_SK),
        "old": _raw_public(OLD_SK),
        # same key under longer ids, so the size tests can tune the header's length
        "k12": _raw_public(HUB_SK),
        "k123": _raw_public(HUB_SK),
    },
    revoked=frozenset({"old"}),
)
VIEWER_KEY = X25519PrivateKey.from_private_bytes(bytes([9]) * 32).public_key().public_bytes_raw()
DROP = object()


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims(**changes: Any) -> dict[str, Any]:
    """Valid live claims; ``changes`` replace members (``DROP`` removes one)."""
    c: dict[str, Any] = {
        "iss": HUB_ID,
        "aud": DEVICE,
        "jti": b64e(bytes(range(16))),
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 300,
        "sub": "officer 4711",
        "case": "2025-000123",
        "reason": "threat_to_life",
        "scope": {"cameras": [3, 1], "mode": "live"},
        "max_dur": 600,
        "incident": {"lat": 52.52, "lon": 13.405, "kind": "fire"},
        "viewer_key": b64e(VIEWER_KEY),
        "dev_nonce": b64e(bytes(range(100, 116))),
    }
    for name, value in changes.items():
        if value is DROP:
            del c[name]
        else:
            c[name] = value
    return c


class Raw:
    """JSON text put verbatim where this object stands (1e3, NaN, duplicate keys…)."""

    def __init__(self, text: str) -> None:
        self.text = text


def to_json(value: Any) -> bytes:
    raws: dict[str, str] = {}

    def default(obj: object) -> str:
        assert isinstance(obj, Raw)
        marker = f"@@raw{len(raws)}@@"
        raws[json.dumps(marker)] = obj.text
        return marker

    text = json.dumps(value, separators=(",", ":"), default=default)
    for marker, raw in raws.items():
        text = text.replace(marker, raw)
    return text.encode()


HEADER = {"alg": "Ed25519", "typ": "edge-access+jwt", "kid": "k1"}


def token_of(header: Any = None, payload: Any = None, key: Ed25519PrivateKey = HUB_SK) -> str:
    """A correctly signed token of any header and payload (dicts, or raw bytes)."""
    h = header if isinstance(header, bytes) else to_json(HEADER if header is None else header)
    p = payload if isinstance(payload, bytes) else to_json(claims() if payload is None else payload)
    signing_input = f"{b64e(h)}.{b64e(p)}".encode()
    return f"{signing_input.decode()}.{b64e(key.sign(signing_input))}"


def verify(token: str | bytes, now: int = NOW) -> AccessRequest:
    return verify_token(token, hub=HUB, device_id=DEVICE, now_s=now)


def refusal(token: str | bytes, now: int = NOW) -> str:
    with pytest.raises(Refused) as e:
        verify(token, now)
    assert e.value.code in CODES
    return e.value.code


VALID = sign_token(claims(), kid="k1", key=HUB_SK)


# --- accepted -----------------------------------------------------------------------------------------------


def test_a_valid_live_request_is_accepted_with_every_field() -> None:
    request = verify(VALID)
    assert request == AccessRequest(
        token=VALID,
        kid="k1",
        iss=HUB_ID,
        aud=DEVICE,
        jti=b64e(bytes(range(16))),
        iat=NOW,
        nbf=NOW,
        exp=NOW + 300,
        sub="officer 4711",
        case="2025-000123",
        reason="threat_to_life",
        scope=Scope(cameras=(3, 1), mode="live"),
        max_dur=600,
        incident=Incident(lat=52.52, lon=13.405, kind="fire"),
        viewer_key=VIEWER_KEY,
        dev_nonce=b64e(bytes(range(100, 116))),
    )
    assert len(request.viewer_key) == 32


def test_a_valid_recorded_request_is_accepted_and_bytes_work_too() -> None:
    scope = {"mode": "recorded", "cameras": [7], "from": NOW - 3600, "to": NOW - 60}
    token = sign_token(
        claims(scope=scope, incident={"lat": -90, "lon": 180, "kind": "k" * 64}), kid="k2", key=NEXT_SK
    )
    for form in (token, token.encode(), bytearray(token.encode())):
        request = verify(form)  # type: ignore[arg-type]
        assert request.token == token
        assert request.kid == "k2"
        assert request.scope == Scope(cameras=(7,), mode="recorded", from_s=NOW - 3600, to_s=NOW - 60)
        assert request.incident == Incident(lat=-90.0, lon=180.0, kind="k" * 64)
        assert isinstance(request.incident.lat, float)


@pytest.mark.parametrize(
    "changes",
    [
        {"scope": {"cameras": list(range(1, 17)), "mode": "live"}},
        {"max_dur": 1},
        {"max_dur": 3600},
        {"sub": "s" * 128, "case": "c" * 128},
        {"sub": "Kommissarin Müller ✓", "case": "Az. 12/25 — «Brand»"},
        {"incident": {"lat": 90, "lon": -180, "kind": "x"}},
        {"jti": b64e(bytes(64))},
        {"reason": "public_safety"},
    ],
    ids=[
        "16 cameras",
        "max_dur 1",
        "max_dur 3600",
        "128 chars",
        "unicode",
        "int coordinates",
        "long jti",
        "reason",
    ],
)
def test_boundaries_that_are_accepted(changes: dict[str, Any]) -> None:
    verify(sign_token(claims(**changes), kid="k1", key=HUB_SK))


def test_sign_token_writes_the_exact_header() -> None:
    header, payload, signature = VALID.split(".")
    assert b64d(header) == b'{"alg":"Ed25519","typ":"edge-access+jwt","kid":"k1"}'
    assert json.loads(b64d(payload)) == claims()
    assert b64d(payload) == json.dumps(claims(), separators=(",", ":"), ensure_ascii=False).encode()
    assert len(b64d(signature)) == 64
    with pytest.raises(ValueError):
        sign_token(claims(), kid="", key=HUB_SK)


# --- a second implementation, both ways ---------------------------------------------------------------------


def test_a_token_made_by_joserfc_is_accepted() -> None:
    from joserfc import jwt
    from joserfc.jwk import OKPKey

    key = OKPKey.import_key(HUB_SK)
    token = jwt.encode(dict(HEADER), claims(), key, algorithms=["Ed25519"])
    request = verify(token)
    assert request.kid == "k1" and request.aud == DEVICE and request.viewer_key == VIEWER_KEY


def test_a_token_from_sign_token_verifies_under_joserfc() -> None:
    from joserfc import jws, jwt
    from joserfc.jwk import OKPKey

    public = OKPKey.import_key(HUB_SK.public_key())
    compact = jws.deserialize_compact(VALID, public, algorithms=["Ed25519"])
    assert compact.headers() == HEADER
    assert json.loads(compact.payload) == claims()
    assert jwt.decode(VALID, public, algorithms=["Ed25519"]).claims == claims()


def test_joserfc_defaults_are_refused() -> None:
    """What a hub gets by calling joserfc without our header: EdDSA (RFC 8037) or typ JWT."""
    from joserfc import jwt
    from joserfc.jwk import OKPKey

    key = OKPKey.import_key(HUB_SK)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc warns that EdDSA is deprecated: that is the point
        eddsa = jwt.encode({"alg": "EdDSA", "kid": "k1"}, claims(), key, algorithms=["EdDSA"])
    assert refusal(eddsa) == "bad_header"
    plain = jwt.encode({"alg": "Ed25519", "kid": "k1"}, claims(), key, algorithms=["Ed25519"])
    assert refusal(plain) == "bad_header"  # typ JWT


# --- 1. size ------------------------------------------------------------------------------------------------


def token_of_size(target: int) -> str:
    """A valid token of exactly ``target`` bytes: a long jti for bulk, ``sub`` and the kid for the rest."""
    for kid in ("k1", "k12", "k123"):
        for jti_bytes in itertools.count(16, 3):
            shortest = sign_token(claims(jti=b64e(bytes(jti_bytes))), kid=kid, key=HUB_SK)
            if len(shortest) > target:
                break
            if len(shortest) + 180 < target:  # sub can add at most 127 bytes, 170 base64 characters
                continue
            for sub_chars in range(1, 129):
                token = sign_token(
                    claims(jti=b64e(bytes(jti_bytes)), sub="s" * sub_chars), kid=kid, key=HUB_SK
                )
                if len(token) == target:
                    return token
    raise AssertionError(f"no token of {target} bytes")


def test_exactly_8192_bytes_is_accepted_and_8193_is_too_large() -> None:
    at_cap = token_of_size(8192)
    over = token_of_size(8193)
    assert len(at_cap.encode()) == 8192 and len(over.encode()) == 8193
    verify(at_cap)
    verify(at_cap.encode())
    assert refusal(over) == "too_large"
    assert refusal(over.encode()) == "too_large"


def test_size_is_checked_on_raw_bytes_before_anything_else() -> None:
    assert refusal(b"\xff" * 8193) == "too_large"
    assert refusal("." * 100_000) == "too_large"
    assert refusal("é" * 4097) == "too_large"  # 4097 characters, 8194 bytes
    assert refusal("é" * 4096) == "malformed"  # 8192 bytes: within the cap, then not base64url
    assert refusal("\ud800" * 100) == "malformed"  # lone surrogates in a str: counted, refused, no crash


# --- 2. malformed -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "..",
        "a.b",
        VALID + ".",
        VALID + ".AAAA",
        VALID.replace(".", "..", 1),
        VALID + "=",
        VALID.split(".")[0] + "=." + VALID.split(".", 1)[1],
        VALID + " ",
        " " + VALID,
        VALID + "\n",
        VALID.replace("-", "+").replace("_", "/") if ("-" in VALID or "_" in VALID) else VALID + "+",
        VALID[:20] + "é" + VALID[21:],
        VALID[:-2] + "\x00" + VALID[-1],
        "eyJ.eyJ.AAA",
        b"\xff\xfe.\x00.\x80",
    ],
    ids=lambda t: repr(t)[:24],
)
def test_not_three_strict_base64url_parts_is_malformed(token: str | bytes) -> None:
    assert refusal(token) == "malformed"


@pytest.mark.parametrize("part", [0, 1, 2])
def test_padding_is_malformed(part: int) -> None:
    parts = VALID.split(".")
    for pad in ("=", "==", "==="):
        padded = list(parts)
        padded[part] += pad
        assert refusal(".".join(padded)) == "malformed"


def _slack_variant(part: str) -> str | None:
    """``part`` with its last character changed in the unused trailing bits only, or None if none exist."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for ch in alphabet:
        other = part[:-1] + ch
        if other != part and b64d(other) == b64d(part):
            return other
    return None


def test_non_canonical_trailing_bits_are_malformed_though_python_decodes_them() -> None:
    # A payload whose length is not a multiple of 3 leaves spare bits in its last character.
    token = VALID
    for extra in range(3):
        token = sign_token(claims(sub="s" * (5 + extra)), kid="k1", key=HUB_SK)
        if len(b64d(token.split(".")[1])) % 3:
            break
    parts = token.split(".")
    tried = 0
    for i in range(3):
        variant = _slack_variant(parts[i])
        if variant is None:
            continue
        assert b64d(variant) == b64d(parts[i])  # what a lenient verifier would see: the same bytes
        mangled = list(parts)
        mangled[i] = variant
        assert refusal(".".join(mangled)) == "malformed"
        tried += 1
    assert tried >= 2  # the signature (64 bytes) always has spare bits, and the payload here


@pytest.mark.parametrize(
    ("where", "data"),
    [
        ("header", b"\xff\xfe"),  # not UTF-8
        ("header", b"\xc0\xaf"),  # overlong encoding
        ("header", b"\xed\xa0\x80"),  # an encoded surrogate
        ("header", b"\xef\xbb\xbf" + to_json(HEADER)),  # a BOM
        ("header", b"[]"),
        ("header", b"null"),
        ("header", b""),
        ("header", b'"Ed25519"'),
        ("payload", b""),
        ("payload", b"[1,2]"),
        ("payload", b"42"),
        ("payload", b"{"),
        ("payload", b"\x80"),
        ("payload", b'{"sub":"a\x01b"}'),  # raw control character in a string
    ],
)
def test_not_a_json_object_in_utf8_is_malformed(where: str, data: bytes) -> None:
    token = token_of(header=data) if where == "header" else token_of(payload=data)
    assert refusal(token) == "malformed"


@pytest.mark.parametrize(
    "header",
    [
        b'{"alg":"Ed25519","typ":"edge-access+jwt","kid":"k1","kid":"k1"}',
        b'{"alg":"none","alg":"Ed25519","typ":"edge-access+jwt","kid":"k1"}',
        b'{"alg":"Ed25519","typ":"edge-access+jwt","kid":"k2","kid":"k1"}',
    ],
)
def test_duplicate_keys_in_the_header_are_malformed(header: bytes) -> None:
    assert refusal(token_of(header=header)) == "malformed"


@pytest.mark.parametrize(
    "payload",
    [
        claims(aud=Raw(f'"elsewhere","aud":"{DEVICE}"')),
        claims(exp=Raw(f'{NOW + 300},"exp":{NOW + 300}')),
        claims(scope={"cameras": [1], "mode": Raw('"recorded","mode":"live"')}),
        claims(incident={"lat": 1, "lon": 2, "kind": Raw('"a","kind":"b"')}),
    ],
    ids=["aud", "same value", "in scope", "in incident"],
)
def test_duplicate_keys_in_the_payload_are_malformed(payload: dict[str, Any]) -> None:
    assert refusal(token_of(payload=payload)) == "malformed"


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
def test_nan_infinity_and_overflowing_numbers_are_malformed(raw: str) -> None:
    assert refusal(token_of(payload=claims(incident={"lat": Raw(raw), "lon": 0, "kind": "x"}))) == "malformed"


def test_a_huge_integer_is_malformed_not_a_crash() -> None:
    assert refusal(token_of(payload=claims(max_dur=Raw("9" * 5000)))) == "malformed"


def test_a_lone_surrogate_escape_is_malformed() -> None:
    assert refusal(token_of(payload=claims(sub=Raw('"a\\ud800b"')))) == "malformed"
    verify(token_of(payload=claims(sub=Raw('"a\\ud83d\\ude92b"'))))  # a surrogate pair is a character: fine


def test_nesting_deeper_than_8_is_malformed() -> None:
    eight = Raw("[" * 7 + "]" * 7)  # the claims object is level 1
    nine = Raw("[" * 8 + "]" * 8)
    assert refusal(token_of(payload=claims(extra=eight))) == "bad_claims"  # parsed; then an unknown claim
    assert refusal(token_of(payload=claims(extra=nine))) == "malformed"
    assert (
        refusal(token_of(payload=claims(extra=Raw('"[[[[[[[[[[[[" ')))) == "bad_claims"
    )  # brackets in a string
    assert refusal(token_of(payload=b"[" * 2500 + b"]" * 2500)) == "malformed"  # no RecursionError
    assert refusal(token_of(header=b'{"a":' * 600 + b"1" + b"}" * 600)) == "malformed"


# --- 3. header ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "alg", ["none", "HS256", "EdDSA", "RS256", "ES256", "ed25519", "ED25519", "Ed448", "", None, 1]
)
def test_any_alg_but_ed25519_is_a_bad_header(alg: object) -> None:
    assert refusal(token_of(header={**HEADER, "alg": alg})) == "bad_header"


def test_alg_none_with_an_empty_signature_is_a_bad_header() -> None:
    h, p, _ = token_of(header={**HEADER, "alg": "none"}).split(".")
    assert refusal(f"{h}.{p}.") == "bad_header"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("crit", ["b64"]),
        ("jwk", {"kty": "OKP", "crv": "Ed25519", "x": b64e(_raw_public(STRANGER_SK))}),
        ("x5u", "https://example.invalid/cert"),
        ("x5c", ["MII"]),
        ("jku", "https://example.invalid/jwks"),
        ("b64", False),
        ("cty", "JWT"),
        ("zip", "DEF"),
        ("nonce", "x"),
    ],
)
def test_an_extra_header_parameter_is_a_bad_header(name: str, value: object) -> None:
    assert refusal(token_of(header={**HEADER, name: value})) == "bad_header"


@pytest.mark.parametrize(
    "header",
    [
        {**HEADER, "typ": "JWT"},
        {**HEADER, "typ": "edge-access+JWT"},
        {**HEADER, "typ": "application/edge-access+jwt"},
        {**HEADER, "typ": ""},
        {**HEADER, "typ": None},
        {"alg": "Ed25519", "kid": "k1"},
        {"typ": "edge-access+jwt", "kid": "k1"},
        {"alg": "Ed25519", "typ": "edge-access+jwt"},
        {**HEADER, "kid": ""},
        {**HEADER, "kid": 1},
        {**HEADER, "kid": None},
        {**HEADER, "kid": ["k1"]},
        {},
    ],
)
def test_wrong_typ_or_kid_is_a_bad_header(header: dict[str, Any]) -> None:
    assert refusal(token_of(header=header)) == "bad_header"


# --- 4. key, 5. signature -----------------------------------------------------------------------------------


def test_an_unknown_kid_is_refused() -> None:
    assert refusal(token_of(header={**HEADER, "kid": "k9"}, key=STRANGER_SK)) == "unknown_key"
    assert refusal(token_of(header={**HEADER, "kid": "K1"})) == "unknown_key"


def test_a_revoked_kid_is_refused_even_with_a_good_signature() -> None:
    assert refusal(sign_token(claims(), kid="old", key=OLD_SK)) == "unknown_key"


def test_a_signature_by_another_key_is_bad() -> None:
    assert refusal(sign_token(claims(), kid="k1", key=STRANGER_SK)) == "bad_signature"
    assert refusal(sign_token(claims(), kid="k1", key=NEXT_SK)) == "bad_signature"  # pinned, but not k1's


@pytest.mark.parametrize("signature", [b"", bytes(63), bytes(64), bytes(65), bytes(128)])
def test_a_signature_of_the_wrong_size_or_zeros_is_bad(signature: bytes) -> None:
    h, p, _ = VALID.split(".")
    assert refusal(f"{h}.{p}.{b64e(signature)}") == "bad_signature"


def test_a_signature_copied_from_another_token_is_bad() -> None:
    other = sign_token(claims(case="other"), kid="k1", key=HUB_SK)
    h, p, _ = VALID.split(".")
    assert refusal(f"{h}.{p}.{other.split('.')[2]}") == "bad_signature"


def test_every_flipped_bit_in_the_decoded_parts_is_refused() -> None:
    # Flipping decoded bits and re-encoding canonically defeats base64's spare bits: every flip changes bytes.
    allowed = [
        {"malformed", "bad_header", "unknown_key", "bad_signature"},
        {"malformed", "bad_signature"},  # the payload is parsed before the signature, judged only after
        {"bad_signature"},
    ]
    parts = VALID.split(".")
    flips = 0
    for i, part in enumerate(parts):
        data = b64d(part)
        for bit in range(len(data) * 8):
            flipped = bytearray(data)
            flipped[bit // 8] ^= 1 << (bit % 8)
            mangled = list(parts)
            mangled[i] = b64e(bytes(flipped))
            code = refusal(".".join(mangled))
            assert code in allowed[i], (i, bit, code)
            flips += 1
    assert flips == 8 * sum(len(b64d(p)) for p in parts) > 4000


def test_every_changed_character_is_refused() -> None:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    codes: set[str] = set()
    for pos, ch in enumerate(VALID):
        replacements = {chr(ord(ch) ^ 1), chr(ord(ch) ^ 0x20), "="}
        if ch in alphabet:
            i = alphabet.index(ch)
            replacements |= {alphabet[(i + 1) % 64], alphabet[(i + 32) % 64]}
        for new in replacements - {ch}:
            codes.add(refusal(VALID[:pos] + new + VALID[pos + 1 :]))
    assert codes <= {"malformed", "bad_header", "unknown_key", "bad_signature"}
    assert {"malformed", "bad_signature"} <= codes


# --- 6. claims ----------------------------------------------------------------------------------------------


def signed(**changes: Any) -> str:
    return token_of(payload=claims(**changes))


@pytest.mark.parametrize(
    "name",
    sorted(claims()),
)
def test_each_missing_claim_is_bad_claims(name: str) -> None:
    assert refusal(signed(**{name: DROP})) == "bad_claims"


@pytest.mark.parametrize("name", ["extra", "nonce", "azp", "cnf", "scp", ""])
def test_an_unknown_claim_is_bad_claims(name: str) -> None:
    assert refusal(signed(**{name: "x"})) == "bad_claims"


@pytest.mark.parametrize("name", ["iat", "nbf", "exp"])
@pytest.mark.parametrize(
    "raw", [f"{NOW}.0", "1.0", f'"{NOW}"', '"1"', "true", "false", "null", "1e3", f"{NOW}e0", "[1]"]
)
def test_non_integer_times_are_bad_claims(name: str, raw: str) -> None:
    assert refusal(signed(**{name: Raw(raw)})) == "bad_claims"


@pytest.mark.parametrize("name", ["iat", "nbf", "exp"])
@pytest.mark.parametrize("value", [-1, 2**53])
def test_times_outside_the_json_safe_range_are_bad_claims(name: str, value: int) -> None:
    assert refusal(signed(**{name: value})) == "bad_claims"


def test_aud_of_another_device_is_the_wrong_audience() -> None:
    assert refusal(signed(aud="edge-" + "cd" * 16)) == "wrong_audience"
    assert refusal(signed(aud=DEVICE.upper())) == "wrong_audience"
    assert refusal(signed(aud="")) == "wrong_audience"


@pytest.mark.parametrize("aud", [[DEVICE], [], None, 1, {"id": DEVICE}])
def test_aud_not_a_string_is_bad_claims(aud: object) -> None:
    assert refusal(signed(aud=aud)) == "bad_claims"


def test_a_wrong_issuer_is_refused() -> None:
    assert refusal(signed(iss="hub-other.example")) == "wrong_issuer"
    assert refusal(signed(iss=1)) == "bad_claims"


BAD_CLAIMS = {
    "reason unknown": {"reason": "curiosity"},
    "reason case": {"reason": "Threat_To_Life"},
    "reason empty": {"reason": ""},
    "reason int": {"reason": 1},
    "mode unknown": {"scope": {"cameras": [1], "mode": "both"}},
    "mode case": {"scope": {"cameras": [1], "mode": "LIVE"}},
    "mode null": {"scope": {"cameras": [1], "mode": None}},
    "mode missing": {"scope": {"cameras": [1]}},
    "cameras missing": {"scope": {"mode": "live"}},
    "live with from/to": {"scope": {"cameras": [1], "mode": "live", "from": NOW - 60, "to": NOW}},
    "live with from": {"scope": {"cameras": [1], "mode": "live", "from": NOW - 60}},
    "recorded without": {"scope": {"cameras": [1], "mode": "recorded"}},
    "recorded only from": {"scope": {"cameras": [1], "mode": "recorded", "from": NOW - 60}},
    "recorded float from": {
        "scope": {"cameras": [1], "mode": "recorded", "from": float(NOW - 60), "to": NOW}
    },
    "recorded string to": {"scope": {"cameras": [1], "mode": "recorded", "from": NOW - 60, "to": str(NOW)}},
    "scope extra member": {"scope": {"cameras": [1], "mode": "live", "audio": True}},
    "scope array": {"scope": [1]},
    "scope string": {"scope": "live"},
    "no cameras": {"scope": {"cameras": [], "mode": "live"}},
    "17 cameras": {"scope": {"cameras": list(range(1, 18)), "mode": "live"}},
    "duplicate cameras": {"scope": {"cameras": [1, 2, 1], "mode": "live"}},
    "camera id string": {"scope": {"cameras": ["1"], "mode": "live"}},
    "camera id bool": {"scope": {"cameras": [True], "mode": "live"}},
    "camera id float": {"scope": {"cameras": [1.0], "mode": "live"}},
    "camera id negative": {"scope": {"cameras": [-1], "mode": "live"}},
    "camera id null": {"scope": {"cameras": [None], "mode": "live"}},
    "cameras not a list": {"scope": {"cameras": 1, "mode": "live"}},
    "max_dur 0": {"max_dur": 0},
    "max_dur 3601": {"max_dur": 3601},
    "max_dur float": {"max_dur": 60.0},
    "max_dur bool": {"max_dur": True},
    "max_dur string": {"max_dur": "60"},
    "incident array": {"incident": [52.5, 13.4]},
    "incident no lat": {"incident": {"lon": 0, "kind": "x"}},
    "incident no kind": {"incident": {"lat": 0, "lon": 0}},
    "incident extra": {"incident": {"lat": 0, "lon": 0, "kind": "x", "alt": 3}},
    "lat 91": {"incident": {"lat": 91, "lon": 0, "kind": "x"}},
    "lat -90.5": {"incident": {"lat": -90.5, "lon": 0, "kind": "x"}},
    "lon 180.01": {"incident": {"lat": 0, "lon": 180.01, "kind": "x"}},
    "lat huge int": {"incident": {"lat": 10**300, "lon": 0, "kind": "x"}},
    "lat bool": {"incident": {"lat": True, "lon": 0, "kind": "x"}},
    "lat string": {"incident": {"lat": "52.5", "lon": 0, "kind": "x"}},
    "lon null": {"incident": {"lat": 0, "lon": None, "kind": "x"}},
    "kind empty": {"incident": {"lat": 0, "lon": 0, "kind": ""}},
    "kind 65 chars": {"incident": {"lat": 0, "lon": 0, "kind": "k" * 65}},
    "kind int": {"incident": {"lat": 0, "lon": 0, "kind": 5}},
    "viewer_key 31 bytes": {"viewer_key": b64e(bytes(31))},
    "viewer_key 33 bytes": {"viewer_key": b64e(bytes(33))},
    "viewer_key padded": {"viewer_key": b64e(VIEWER_KEY) + "="},
    "viewer_key std base64": {"viewer_key": base64.b64encode(b"\xfb\xff" * 16).decode().rstrip("=")},
    "viewer_key hex": {"viewer_key": VIEWER_KEY.hex()},
    "viewer_key non-canonical": {"viewer_key": _slack_variant(b64e(VIEWER_KEY))},
    "viewer_key bytes array": {"viewer_key": list(VIEWER_KEY)},
    "jti 15 bytes": {"jti": b64e(bytes(15))},
    "jti empty": {"jti": ""},
    "jti padded": {"jti": b64e(bytes(16)) + "=="},
    "jti not base64url": {"jti": "not a jti but long enough!!"},
    "jti int": {"jti": 2**100},
    "sub empty": {"sub": ""},
    "sub 129": {"sub": "s" * 129},
    "sub newline": {"sub": "officer\nforged log line"},
    "sub escape": {"sub": "\x1b[31mred"},
    "sub int": {"sub": 4711},
    "case line separator": {"case": "a\u2028b"},
    "kind tab": {"incident": {"lat": 0, "lon": 0, "kind": "a\tb"}},
    "case empty": {"case": ""},
    "case 129": {"case": "c" * 129},
    "case null": {"case": None},
    "dev_nonce int": {"dev_nonce": 1},
}


@pytest.mark.parametrize("changes", BAD_CLAIMS.values(), ids=BAD_CLAIMS.keys())
def test_bad_claim_shapes_are_bad_claims(changes: dict[str, Any]) -> None:
    assert refusal(signed(**changes)) == "bad_claims"


def test_jti_of_16_bytes_is_enough_and_15_is_not() -> None:
    verify(signed(jti=b64e(bytes(16))))
    assert refusal(signed(jti=b64e(bytes(15)))) == "bad_claims"


# --- 7. time ------------------------------------------------------------------------------------------------


def test_expired_after_the_skew_and_accepted_at_its_edge() -> None:
    token = signed()
    verify(token, now=NOW + 300 + 60)
    assert refusal(token, now=NOW + 300 + 61) == "expired"


def test_not_yet_valid_beyond_the_skew() -> None:
    verify(signed(nbf=NOW + 60))
    assert refusal(signed(nbf=NOW + 61)) == "not_yet_valid"
    verify(signed(iat=NOW + 60, nbf=NOW, exp=NOW + 360))
    assert refusal(signed(iat=NOW + 61, nbf=NOW, exp=NOW + 361)) == "not_yet_valid"
    assert refusal(signed(), now=NOW - 61) == "not_yet_valid"


def test_lifetime_over_300_s_or_empty_is_refused() -> None:
    verify(signed(exp=NOW + 300))
    assert refusal(signed(exp=NOW + 301)) == "lifetime_too_long"
    assert refusal(signed(iat=NOW - 1000, nbf=NOW - 1000, exp=NOW + 10)) == "lifetime_too_long"
    assert refusal(signed(nbf=NOW + 10, exp=NOW + 10)) == "lifetime_too_long"  # exp <= nbf
    assert refusal(signed(iat=NOW + 30, nbf=NOW, exp=NOW + 20)) == "lifetime_too_long"  # exp before iat


# --- order of the checks ------------------------------------------------------------------------------------


def test_checks_run_in_the_contract_order() -> None:
    big = token_of(payload=claims(case="c" * 9000))
    assert refusal(big) == "too_large"  # not merely malformed or bad_claims
    h, p, s = token_of(header={**HEADER, "alg": "EdDSA"}).split(".")
    assert refusal(f"{h}.{p}=.{s}") == "malformed"  # before the header
    assert refusal(token_of(header={**HEADER, "kid": "k9", "x5u": "u"})) == "bad_header"  # before the key
    assert (
        refusal(token_of(header={**HEADER, "kid": "k9"}, key=HUB_SK)) == "unknown_key"
    )  # before the signature
    # Claims are not examined before the signature holds.
    assert refusal(sign_token(claims(aud=[DEVICE]), kid="k1", key=STRANGER_SK)) == "bad_signature"
    assert refusal(signed(aud=[DEVICE], iss="other", exp=NOW - 1000)) == "bad_claims"
    assert refusal(signed(aud="other", iss="other", exp=NOW - 1000)) == "wrong_audience"
    assert refusal(signed(iss="other", iat=NOW - 1000, nbf=NOW - 1000, exp=NOW - 999)) == "wrong_issuer"
    assert refusal(signed(nbf=NOW + 100, exp=NOW + 500)) == "not_yet_valid"  # before the lifetime
    assert refusal(signed(iat=NOW - 1000, nbf=NOW - 1000, exp=NOW - 100)) == "expired"  # before the lifetime


# --- Refused and HubKeys ------------------------------------------------------------------------------------


def test_refusal_details_are_one_short_escaped_line() -> None:
    nasty = "k\n\x1b[31m\u202e" + "x" * 5000
    with pytest.raises(Refused) as e:
        verify(token_of(header={**HEADER, "kid": nasty}, key=STRANGER_SK))
    err = e.value
    assert isinstance(err, Error) and err.kind == "refused" and err.code == "unknown_key"
    assert err.detail.isascii() and err.detail.isprintable() and len(err.detail) < 160
    assert str(err).startswith("unknown_key: ")
    for changes in ({"aud": nasty}, {"iss": nasty}, {"reason": nasty}, {nasty: 1}):
        with pytest.raises(Refused) as e:
            verify(signed(**changes))
        assert e.value.detail.isascii() and e.value.detail.isprintable() and len(e.value.detail) < 160


def test_refused_survives_pickling() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(Refused("expired", "too old")))
    assert (err.code, err.detail, str(err)) == ("expired", "too old", "expired: too old")


def test_hub_keys_are_checked_and_copied() -> None:
    with pytest.raises(ValueError):
        HubKeys(hub_id="h", keys={"k": bytes(31)})
    with pytest.raises(ValueError):
        HubKeys(hub_id="h", keys={"": bytes(32)})
    source = {"k1": _raw_public(HUB_SK)}
    hub = HubKeys(hub_id=HUB_ID, keys=source)
    source["k1"] = _raw_public(STRANGER_SK)
    assert hub.keys["k1"] == _raw_public(HUB_SK)
    with pytest.raises(TypeError):
        hub.keys["k9"] = bytes(32)  # type: ignore[index]


_SMALL_ORDER = [
    bytes(32),
    b"\x01" + bytes(31),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    b"\xec" + b"\xff" * 30 + b"\x7f",  # p - 1
    b"\xed" + b"\xff" * 30 + b"\x7f",  # p, a non-canonical 0
    b"\xee" + b"\xff" * 30 + b"\x7f",  # p + 1, a non-canonical 1
]


def test_small_order_hub_keys_are_refused_when_pinned() -> None:
    # Why: OpenSSL accepts the all-zero key, and then a signature of zeros "verifies" for this message.
    Ed25519PublicKey.from_public_bytes(bytes(32)).verify(bytes(64), b"x")
    for weak in _SMALL_ORDER:
        for encoding in (weak, weak[:31] + bytes([weak[31] | 0x80])):  # with the sign bit set, too
            with pytest.raises(ValueError, match="small-order"):
                HubKeys(hub_id="h", keys={"k1": _raw_public(HUB_SK), "weak": encoding})


def test_a_token_of_the_wrong_type_is_malformed() -> None:
    for token in (None, 1, ["a", "b", "c"], memoryview(VALID.encode())):
        with pytest.raises(Refused) as e:
            verify_token(token, hub=HUB, device_id=DEVICE, now_s=NOW)  # type: ignore[arg-type]
        assert e.value.code == "malformed"


# --- fuzzing ------------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
_L = len(VALID)
_MUTATION = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, _L), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, _L - 1), st.integers(1, 16)),
    st.tuples(st.just("replace"), st.integers(0, _L - 1), st.binary(min_size=1, max_size=1)),
    st.tuples(st.just("truncate"), st.integers(0, _L - 1), st.just(0)),
    st.tuples(st.just("swap"), st.permutations([0, 1, 2]), st.just(0)),
    st.tuples(st.just("part"), st.integers(0, 2), st.binary(max_size=120)),
)


def _mutate(token: bytes, mutation: tuple[str, Any, Any]) -> bytes:
    op, a, b = mutation
    if op == "insert":
        return token[:a] + b + token[a:]
    if op == "delete":
        return token[:a] + token[a + b :]
    if op == "replace":
        return token[:a] + b + token[a + 1 :]
    if op == "truncate":
        return token[:a]
    parts = token.split(b".")
    if op == "swap":
        return b".".join(parts[i] for i in a) if len(parts) == 3 else token[::-1]
    parts[a % len(parts)] = base64.urlsafe_b64encode(b).rstrip(b"=")  # a replaced part, canonically encoded
    return b".".join(parts)


@FUZZ
@given(st.lists(_MUTATION, min_size=1, max_size=3))
def test_any_mutation_of_a_valid_token_is_refused(mutations: list[tuple[str, Any, Any]]) -> None:
    original = VALID.encode()
    assert verify(original).token == VALID  # a verifier refusing everything fails here
    mutated = original
    for m in mutations:
        mutated = _mutate(mutated, m)
    assume(mutated != original)
    refusal(mutated)
    refusal(mutated.decode("latin-1"))  # the same as text: any non-ASCII character is refused too


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_NAMES = [
    *sorted(claims()),
    "scope.cameras",
    "scope.mode",
    "scope.from",
    "incident.lat",
    "incident.kind",
    "other",
]


@FUZZ
@given(st.sampled_from(_NAMES), _JSON)
def test_any_claim_value_under_a_good_signature_is_accepted_or_refused_never_a_crash(
    name: str, value: Any
) -> None:
    c = claims()
    if "." in name:
        outer, inner = name.split(".")
        c[outer] = {**c[outer], inner: value}
    else:
        c[name] = value
    try:
        request = verify(sign_token(c, kid="k1", key=HUB_SK))
    except Refused as e:
        assert e.code in CODES
        return
    assert request.aud == DEVICE and len(request.viewer_key) == 32


@FUZZ
@given(st.binary(max_size=9000) | st.text(max_size=9000))
def test_garbage_is_refused(garbage: bytes | str) -> None:
    refusal(garbage)
