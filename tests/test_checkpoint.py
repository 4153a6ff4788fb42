"""C2SP signed-note / tlog-checkpoint with Ed25519 (edge/checkpoint.py).

Known answers (data copied, not code):
  [GO-NOTE] golang.org/x/mod sumdb/note/note_test.go: the PeterNeumann and EnochRoot keys, the exact signed
            note Sign must produce, and the malformed notes Open must refuse.
  [GO-SUMDB] a real sum.golang.org checkpoint, quoted in github.com/sigsum/sigsum
            proposals/2026-01-22-tags-releases-non-releases.md, verified with the sum.golang.org verifier key
            from github.com/golang/go src/cmd/go/internal/modfetch/key.go.
  [C2SP] https://c2sp.org/signed-note and https://c2sp.org/tlog-checkpoint (format rules).
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import checkpoint as cpmod
from edge.checkpoint import (
    MAX_NOTE_SIZE,
    MAX_SIGNATURES,
    Checkpoint,
    CheckpointError,
    Signature,
    key_hash,
    parse,
    parse_note,
    parse_vkey,
    public_key_bytes,
    sign,
    sign_note,
    verify,
    vkey,
)
from edge.errors import Error
from edge.merkle import EMPTY_ROOT, leaf_hash

# [GO-NOTE]
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
).encode()
ENOCH_SIG = (
    "— EnochRoot "
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
).encode()

# [GO-SUMDB]
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_NOTE = (
    "go.sum database tree\n"
    "49189689\n"
    "ftjbAOzaupaIvaPo/G+Dk63nxOZ2s1OPOKIaPtXs7S4=\n"
    "\n"
    "— sum.golang.org "
    "Az3grlKZssqRoMNPpZfKt0TphbbcF+pzXqElURJKRNFKfaUAgqeI5k2AORH0QAhg/ebRwyIqD/OqP4oLtLnNumvOBAM=\n"
).encode()

ORIGIN = "edge.example/device/0f3a"
NAME = "edge.example/device/0f3a"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = public_key_bytes(KEY)
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
ROOT = leaf_hash(b"some entry")
CP = Checkpoint(ORIGIN, 1234, ROOT)
EM = "—".encode()


def peter_key() -> Ed25519PrivateKey:
    seed = base64.b64decode(PETER_SKEY.split("+", 4)[4])
    assert seed[0] == 0x01
    return Ed25519PrivateKey.from_private_bytes(seed[1:])


def good_note(cp: Checkpoint = CP) -> bytes:
    return sign(cp, NAME, KEY)


def verify_ours(note: bytes) -> Checkpoint:
    return verify(note, name=NAME, public_key=PUB, origin=ORIGIN)


def refused(note: bytes, reason: str) -> None:
    with pytest.raises(CheckpointError) as info:
        verify_ours(note)
    assert reason in str(info.value), str(info.value)


# --- known answers --------------------------------------------------------------------------------


def test_go_note_sign_kat() -> None:
    key = peter_key()
    assert key_hash("PeterNeumann", public_key_bytes(key)) == bytes.fromhex("c74f20a3")
    assert vkey("PeterNeumann", public_key_bytes(key)) == PETER_VKEY
    # Ed25519 is deterministic, so the whole signed note is a known answer.
    assert sign_note(GO_TEXT, "PeterNeumann", key) == GO_TEXT + b"\n" + PETER_SIG


def test_go_vkeys_parse_and_hash() -> None:
    name, pub = parse_vkey(PETER_VKEY)
    assert name == "PeterNeumann" and pub == public_key_bytes(peter_key())
    name, pub = parse_vkey(ENOCH_VKEY)
    assert name == "EnochRoot" and key_hash(name, pub) == bytes.fromhex("af0cfe78")
    assert vkey(name, pub) == ENOCH_VKEY
    # The key hash is SHA-256(name || 0x0A || 0x01 || key)[:4], spelled out.
    assert hashlib.sha256(b"EnochRoot\n\x01" + pub).digest()[:4] == key_hash(name, pub)


def test_go_vkey_manglings_refused() -> None:
    # [GO-NOTE] TestNewVerifier: every proper substring and every single-byte change is refused.
    raw = PETER_VKEY.encode()
    for i in range(len(raw) + 1):
        for j in range(i + 1, len(raw) + 1):
            if (i, j) != (0, len(raw)):
                with pytest.raises(CheckpointError):
                    parse_vkey(raw[i:j].decode())
    for i in range(len(raw)):
        mangled = bytearray(raw)
        mangled[i] += 1
        with pytest.raises(CheckpointError):
            parse_vkey(mangled.decode())
    for bad, reason in (
        ("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==", "not a verifier key"),
        ("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEQ==", "not an Ed25519 key"),
        ("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "not an Ed25519 key"),
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterNeumanm+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "expected <name>"),
        ("", "expected <name>"),
    ):
        with pytest.raises(CheckpointError, match=reason):
            parse_vkey(bad)


def test_go_note_parse_kat() -> None:
    text, sigs = parse_note(GO_TEXT + b"\n" + PETER_SIG + ENOCH_SIG)
    assert text == GO_TEXT
    assert [(s.name, s.key_hash.hex(), len(s.signature)) for s in sigs] == [
        ("PeterNeumann", "c74f20a3", 64),
        ("EnochRoot", "af0cfe78", 64),
    ]
    assert sigs[0].line() == PETER_SIG and sigs[1].line() == ENOCH_SIG
    # A valid signed note, but its text is not a checkpoint.
    with pytest.raises(CheckpointError, match="not a checkpoint: the text needs origin"):
        parse(GO_TEXT + b"\n" + PETER_SIG)


@pytest.mark.parametrize(
    ("note", "reason"),
    [
        # [GO-NOTE] TestOpen badMsgs
        (GO_TEXT, "no blank line"),
        (GO_TEXT + b"\n", "no signature lines"),
        (GO_TEXT + b"\n" + PETER_SIG[:-1], "last signature line does not end with a newline"),
        (b"\x01" + GO_TEXT + b"\n" + PETER_SIG, "control character 0x01"),
        (b"\xff" + GO_TEXT + b"\n" + PETER_SIG, "not valid UTF-8"),
        (GO_TEXT + b"\n" + EM + b" Bad Name " + PETER_SIG.split(b" ")[2][:-1], "does not end with a newline"),
        (GO_TEXT + b"\n" + PETER_SIG + b"Unexpected line.\n", "data after the signatures"),
        # [GO-NOTE] too many signatures
        (GO_TEXT + b"\n" + PETER_SIG * 101, f"more than {MAX_SIGNATURES} signatures"),
    ],
)
def test_go_malformed_notes_refused(note: bytes, reason: str) -> None:
    with pytest.raises(CheckpointError, match=reason):
        parse_note(note)


def test_real_sumdb_checkpoint_verifies() -> None:
    name, pub = parse_vkey(SUMDB_VKEY)
    assert name == "sum.golang.org" and key_hash(name, pub) == bytes.fromhex("033de0ae")
    cp = verify(SUMDB_NOTE, name=name, public_key=pub, origin="go.sum database tree")
    assert cp == Checkpoint(
        "go.sum database tree", 49189689, base64.b64decode("ftjbAOzaupaIvaPo/G+Dk63nxOZ2s1OPOKIaPtXs7S4=")
    )
    assert cp.body() == SUMDB_NOTE.split(b"\n\n")[0] + b"\n"
    # One changed digit in the size breaks the signature.
    with pytest.raises(CheckpointError, match=r"^bad signature$"):
        verify(SUMDB_NOTE.replace(b"49189689", b"49189688"), name=name, public_key=pub, origin=cp.origin)


# --- our own checkpoints: round trip ------------------------------------------------------------------


def test_round_trip() -> None:
    note = good_note()
    assert note == (
        f"{ORIGIN}\n1234\n{base64.b64encode(ROOT).decode()}\n\n— {NAME} ".encode()
        + base64.b64encode(key_hash(NAME, PUB) + KEY.sign(CP.body()))
        + b"\n"
    )
    cp, sigs = parse(note)
    assert cp == CP
    assert sigs == [Signature(NAME, key_hash(NAME, PUB), KEY.sign(CP.body()))]
    assert verify_ours(note) == CP


def test_round_trip_empty_log_and_extensions() -> None:
    empty = Checkpoint(ORIGIN, 0, EMPTY_ROOT)
    assert empty.body().split(b"\n")[1] == b"0"
    assert verify_ours(good_note(empty)) == empty
    ext = Checkpoint(ORIGIN, 7, ROOT, ("time 1700000000", "— not a signature, just text"))
    assert verify_ours(good_note(ext)) == ext


def test_cosignatures_by_other_keys_are_ignored_when_ours_verifies() -> None:
    note = good_note()
    wname = "witness.example"
    witness = Signature(wname, key_hash(wname, public_key_bytes(OTHER_KEY)), b"x" * 72)
    cosigned = note + witness.line()
    assert verify_ours(cosigned) == CP
    assert len(parse(cosigned)[1]) == 2
    # The other key first works the same.
    text, _ = parse_note(note)
    assert verify_ours(text + b"\n" + witness.line() + parse_note(note)[1][0].line()) == CP
    # Our key under another name is another key, and ignored.
    twice = note + Signature("alias", key_hash("alias", PUB), KEY.sign(text)).line()
    assert verify_ours(twice) == CP


def test_sixteen_signatures_accepted_seventeen_refused() -> None:
    note = good_note()
    filler = Signature("w", b"abcd", b"s" * 64).line()
    assert verify_ours(note + filler * (MAX_SIGNATURES - 1)) == CP
    refused(note + filler * MAX_SIGNATURES, "more than 16 signatures")


# --- refusals: signatures and keys ----------------------------------------------------------------


def test_changed_text_is_a_bad_signature() -> None:
    note = good_note()
    root_b64 = base64.b64encode(ROOT)
    changed_root = root_b64[:10] + (b"A" if root_b64[10:11] != b"A" else b"B") + root_b64[11:]
    for tampered in (
        note.replace(b"\n1234\n", b"\n1235\n"),
        note.replace(b"\n1234\n", b"\n12345\n"),
        note.replace(root_b64, changed_root),
        note.replace(ORIGIN.encode(), ORIGIN.encode()[:-1] + b"b", 1),
        note.replace(b"\n\n", b"\nextension\n\n", 1),
    ):
        assert tampered != note
        with pytest.raises(CheckpointError, match=r"^bad signature$"):
            verify(tampered, name=NAME, public_key=PUB, origin=parse(tampered)[0].origin)


def test_bad_signature_bytes() -> None:
    note = good_note()
    text, (sig,) = parse_note(note)
    for bad in (
        Signature(sig.name, sig.key_hash, bytes([sig.signature[0] ^ 1]) + sig.signature[1:]),
        Signature(sig.name, sig.key_hash, sig.signature[:-1] + bytes([sig.signature[-1] ^ 0x80])),
        Signature(sig.name, sig.key_hash, sig.signature[:63]),  # too short for Ed25519
        Signature(sig.name, sig.key_hash, sig.signature + b"\0"),  # too long
        Signature(sig.name, sig.key_hash, OTHER_KEY.sign(text)),  # by another key under our key hash
    ):
        refused(text + b"\n" + bad.line(), "bad signature")
    # A good signature does not save a note that also carries a failing one by our key [C2SP].
    refused(note + Signature(sig.name, sig.key_hash, b"\0" * 64).line(), "bad signature")


def test_unknown_key() -> None:
    refused(sign(CP, NAME, OTHER_KEY), f"signed by an unknown key (name {NAME}, key hash ")
    refused(sign(CP, "someone.else", KEY), "signed by an unknown key (name someone.else, key hash")
    # Our name and the key hash of another key: unknown, whatever the signature.
    with pytest.raises(CheckpointError) as info:
        verify_ours(sign(CP, NAME, OTHER_KEY))
    other = key_hash(NAME, public_key_bytes(OTHER_KEY)).hex()
    assert other in str(info.value) and key_hash(NAME, PUB).hex() in str(info.value)
    # [C2SP] unknown keys are ignored "even if they share a name or ID (but not both)" with a known key.
    note = good_note()
    text, (ours,) = parse_note(note)
    same_id = Signature("someone.else", ours.key_hash, b"\0" * 64)
    same_name = Signature(NAME, bytes(b ^ 0xFF for b in ours.key_hash), b"\0" * 64)
    for stranger in (same_id, same_name):
        assert verify_ours(note + stranger.line()) == CP
        assert verify_ours(text + b"\n" + stranger.line() + ours.line()) == CP
        refused(text + b"\n" + stranger.line(), "signed by an unknown key")
    # A huge or many-signer note does not make a huge message.
    long = Signature("x" * 100_000, b"abcd", b"s" * 64).line()
    with pytest.raises(CheckpointError) as info:
        verify_ours(text + b"\n" + long * 10)
    assert len(str(info.value)) < 1000 and str(info.value).count("name x") == 4


def test_wrong_origin() -> None:
    other = Checkpoint("another.example/log", CP.size, CP.root)
    refused(good_note(other), f"origin is another.example/log, expected {ORIGIN}")


def test_bad_public_key() -> None:
    with pytest.raises(CheckpointError, match="32 bytes"):
        verify(good_note(), name=NAME, public_key=PUB[:31], origin=ORIGIN)
    # 32 bytes that are no valid curve point: still just a signature that does not verify.
    text, (sig,) = parse_note(good_note())
    junk = b"\xff" * 32
    note = text + b"\n" + Signature(NAME, key_hash(NAME, junk), sig.signature).line()
    with pytest.raises(CheckpointError, match=r"^bad signature"):
        verify(note, name=NAME, public_key=junk, origin=ORIGIN)


# --- refusals: format -------------------------------------------------------------------------------


def _note_with_body(body: bytes) -> bytes:
    """A note whose text is ``body``, correctly signed by our key — only the format can be at fault."""
    return sign_note(body, NAME, KEY)


ROOT_B64 = base64.b64encode(ROOT)


def nb(size: bytes, root: bytes) -> bytes:
    """A correctly signed note with our origin and the given size and root lines."""
    return _note_with_body(ORIGIN.encode() + b"\n" + size + b"\n" + root + b"\n")


@pytest.mark.parametrize(
    ("note", "reason"),
    [
        (good_note() + b"garbage\n", "data after the signatures"),
        (good_note() + b"garbage", "data after the signatures"),
        (good_note() + b"\n", "data after the signatures"),
        (good_note() + b"\n\n", "data after the signatures"),
        (good_note() + b" ", "data after the signatures"),
        (good_note().replace(b"\n\n", b"\n"), "no blank line before the signatures"),
        (CP.body() + b"\n", "no signature lines"),
        (CP.body(), "no blank line before the signatures"),
        (CP.body()[:-1], "does not end with a newline"),
        (CP.body() + b"\nnot a signature", "does not end with a newline"),
        (good_note().replace(b"\n\n", b"\n\n\n"), "line 4 of the text is empty"),
        (good_note().replace(b"\n\n", b"\n\n\n\n"), "line 4 of the text is empty"),
        (good_note().replace(b"\n", b"\r\n"), "control character 0x0d"),
        (good_note()[:-1] + b"\r\n", "control character 0x0d"),
        (good_note()[:-1], "last signature line does not end with a newline"),
        (b"\xc3" + good_note(), "not valid UTF-8"),
        (good_note().replace(b"1234", b"12\xff4"), "not valid UTF-8"),
        (good_note().replace(EM, b"\xe2\x80"), "not valid UTF-8"),
        (good_note().replace(b"1234", b"12\t34"), "control character 0x09"),
        (good_note().replace(b"1234", b"12\x0034"), "control character 0x00"),
        (good_note().replace(b"1234", b"12\x1b34"), "control character 0x1b"),
        (b"", "no blank line"),
        (b"\n", "no signature lines"),
        (b"x" * (MAX_NOTE_SIZE + 1), "larger than"),
        (good_note().replace(EM + b" ", b"- "), "no signature lines after the blank line"),
        (good_note().replace(EM + b" ", EM), "no signature lines after the blank line"),
        (good_note().replace(EM + b" ", EM + b"  "), "bad signature line"),
        (good_note().replace(NAME.encode() + b" ", b"a+b "), "bad signature line"),
        (good_note().replace(NAME.encode() + b" ", "a\u00a0b ".encode()), "bad signature line"),
        (good_note()[:-2] + b"!\n", "bad signature encoding"),
        (good_note()[:-2] + b"\n", "bad signature encoding"),
        (good_note().replace(NAME.encode() + b" ", NAME.encode() + b" \n"), "data after the signatures"),
        (
            good_note().replace(NAME.encode() + b" ", NAME.encode() + b" \xe2\x80\x94 "),
            "bad signature encoding",
        ),
        (_note_with_body(b"o\n"), "needs origin, tree size and root hash"),
        (_note_with_body(b"o\n5\n"), "needs origin, tree size and root hash"),
        (_note_with_body(b"\n5\n" + ROOT_B64 + b"\n"), "line 1 of the text is empty"),
        (_note_with_body(b" \n5\n" + ROOT_B64 + b"\n"), "origin is  , expected"),
        (nb(b"05", ROOT_B64), "tree size '05'"),
        (nb(b"00", ROOT_B64), "tree size '00'"),
        (nb(b"+5", ROOT_B64), "tree size '+5'"),
        (nb(b"-1", ROOT_B64), "tree size '-1'"),
        (nb(b" 5", ROOT_B64), "tree size ' 5'"),
        (nb(b"5 ", ROOT_B64), "tree size '5 '"),
        (nb(b"1_000", ROOT_B64), "tree size '1_000'"),
        (nb("\u0665".encode(), ROOT_B64), "is not a decimal"),
        (nb(b"0x10", ROOT_B64), "is not a decimal"),
        (nb(b"99999999999999999999", ROOT_B64), "not a decimal"),
        (nb(b"9223372036854775808", ROOT_B64), "out of range"),
        (nb(b"5", base64.b64encode(ROOT[:31])), "not base64 of 32"),
        (nb(b"5", base64.b64encode(ROOT + b"!")), "not base64 of 32"),
        (nb(b"5", ROOT_B64[:-1]), "not base64 of 32"),
        (nb(b"5", ROOT_B64.rstrip(b"=")), "not base64 of 32"),
        (nb(b"5", ROOT_B64.replace(b"=", b"\\")), "not base64"),
        (nb(b"5", base64.urlsafe_b64encode(b"\xff" * 32)), "base64"),
        (nb(b"5", b" " + ROOT_B64), "not base64 of 32"),
    ],
)
def test_malformed_notes_refused(note: bytes, reason: str) -> None:
    with pytest.raises(CheckpointError) as info:
        verify_ours(note)
    assert reason in str(info.value), str(info.value)
    assert isinstance(info.value, Error) and info.value.kind == "checkpoint"


def test_non_canonical_root_base64_refused() -> None:
    # 32 bytes end in two padding bits; a note that sets them still decodes to the same root in lenient
    # decoders. Only one spelling is a checkpoint.
    assert ROOT_B64.endswith(b"=")
    last = ROOT_B64[-2:-1]
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    sibling = alphabet[alphabet.index(last) ^ 1 : (alphabet.index(last) ^ 1) + 1]
    lenient = ROOT_B64[:-2] + sibling + b"="
    assert base64.b64decode(lenient) == ROOT
    refused(nb(b"1234", lenient), "not base64 of 32 bytes")


def test_checkpoint_constructor_validates() -> None:
    for kwargs, reason in (
        ({"origin": ""}, "origin line is empty"),
        ({"origin": "a\nb"}, "control character 0x0a"),
        ({"size": -1}, "out of range"),
        ({"size": 1 << 63}, "out of range"),
        ({"size": True}, "out of range"),
        ({"root": ROOT[:31]}, "32 bytes"),
        ({"root": "x" * 32}, "32 bytes"),
        ({"extensions": ("",)}, "extension line is empty"),
        ({"extensions": ("a\rb",)}, "control character 0x0d"),
    ):
        args = {"origin": ORIGIN, "size": 1, "root": ROOT, **kwargs}
        with pytest.raises(CheckpointError, match=reason):
            Checkpoint(**args)  # type: ignore[arg-type]


def test_bad_key_names_refused_when_signing() -> None:
    for name in ("", "a b", "a+b", "a\u2003b", "a\nb"):
        with pytest.raises(CheckpointError, match="bad key name"):
            sign(CP, name, KEY)
        with pytest.raises(CheckpointError, match="bad key name"):
            vkey(name, PUB)
    with pytest.raises(CheckpointError, match="end with a newline"):
        sign_note(b"no newline", NAME, KEY)


# --- verifier keys --------------------------------------------------------------------------------


def test_vkey_round_trip() -> None:
    text = vkey(NAME, PUB)
    encoded = base64.b64encode(bytes([0x01]) + PUB).decode()
    assert text == f"{NAME}+{key_hash(NAME, PUB).hex()}+{encoded}"
    name, pub = parse_vkey(text)
    assert (name, pub) == (NAME, PUB)
    assert verify(good_note(), name=name, public_key=pub, origin=ORIGIN) == CP
    # Hex digits of the hash may be upper case (Go parses them as a number).
    assert parse_vkey(f"{NAME}+{key_hash(NAME, PUB).hex().upper()}+{encoded}") == (NAME, PUB)


def test_vkey_with_wrong_hash_refused() -> None:
    name, hash_hex, encoded = vkey(NAME, PUB).split("+", 2)
    wrong = f"{int(hash_hex, 16) ^ 1:08x}"
    with pytest.raises(CheckpointError, match="does not match"):
        parse_vkey(f"{name}+{wrong}+{encoded}")
    # The right hash for another name.
    with pytest.raises(CheckpointError, match="does not match"):
        parse_vkey(f"other+{hash_hex}+{encoded}")
    for bad in (f"{name}+{hash_hex}", f"{name}+{hash_hex}+", f"{name}+{hash_hex[:7]}+{encoded}", "x"):
        with pytest.raises(CheckpointError, match="not a verifier key"):
            parse_vkey(bad)
    with pytest.raises(CheckpointError, match="32 bytes"):
        vkey(NAME, PUB[:31])


def test_module_exports() -> None:
    assert set(cpmod.__all__) <= set(dir(cpmod))
