"""edge.credentials: camera secrets sealed to a public key on disk, opened only with the 0600 private key."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import stat
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.credentials import (
    BLOB_VERSION,
    INFO_LABEL,
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    CredentialError,
    Opener,
    Sealer,
)
from edge.errors import Error

AAD = b"rtsp://10.0.0.7:554/Streaming/Channels/101"
OTHER_AAD = b"rtsp://10.0.0.8:554/Streaming/Channels/101"
SECRET = "correct horse battery staple"
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def error_text(e: BaseException) -> str:
    """Everything an error could show: str, repr, the formatted traceback, and every chained error."""
    parts = [str(e), repr(e), "".join(traceback.format_exception(e))]
    seen = e.__cause__ or e.__context__
    while seen is not None:
        parts += [str(seen), repr(seen), repr(getattr(seen, "object", ""))]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


# --- round trip -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [SECRET, "", "pä$$wörd:@/?#%40 ", "🔑" * 100, "x" * 10_000])
def test_round_trip(tmp_path: Path, secret: str) -> None:
    blob = Sealer.load(tmp_path).seal(secret, AAD)
    assert Opener.load(tmp_path).open(blob, AAD) == secret


def test_blob_is_version_byte_then_hpke_output(tmp_path: Path) -> None:
    blob = Sealer.load(tmp_path).seal(SECRET, AAD)
    assert blob[0] == BLOB_VERSION == 1
    assert len(blob) == 1 + 32 + len(SECRET.encode()) + 16
    # Open it as the module docstring says, with nothing but cryptography's HPKE and the raw key file.
    key = X25519PrivateKey.from_private_bytes((tmp_path / PRIVATE_KEY_NAME).read_bytes())
    info = INFO_LABEL + b"\x00" + hashlib.sha256(AAD).digest()
    assert len(info) <= 64
    assert SUITE.decrypt(blob[1:], key, info=info) == SECRET.encode()


def test_sealing_is_randomised(tmp_path: Path) -> None:
    sealer = Sealer.load(tmp_path)
    assert sealer.seal(SECRET, AAD) != sealer.seal(SECRET, AAD)


def test_opener_gives_a_matching_sealer(tmp_path: Path) -> None:
    opener = Opener.load(tmp_path)
    assert opener.open(opener.sealer().seal(SECRET, AAD), AAD) == SECRET


# --- refusals ---------------------------------------------------------------------------------------------


def test_wrong_aad_is_refused(tmp_path: Path) -> None:
    blob = Sealer.load(tmp_path).seal(SECRET, AAD)
    with pytest.raises(CredentialError, match="sealed for another camera") as info:
        Opener.load(tmp_path).open(blob, OTHER_AAD)
    assert isinstance(info.value, Error)
    assert info.value.kind == "credential"


def test_every_flipped_bit_is_refused(tmp_path: Path) -> None:
    blob = Sealer.load(tmp_path).seal("s3cret", AAD)
    opener = Opener.load(tmp_path)
    for index in range(len(blob)):
        for bit in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[index] ^= bit
            with pytest.raises(CredentialError):
                opener.open(bytes(tampered), AAD)


def test_wrong_key_is_refused(tmp_path: Path) -> None:
    blob = Sealer.load(tmp_path / "box-a").seal(SECRET, AAD)
    with pytest.raises(CredentialError, match="wrong key"):
        Opener.load(tmp_path / "box-b").open(blob, AAD)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "too short (0 bytes)"),
        (b"\x01" + b"\x00" * 47, "too short (48 bytes)"),
        (b"\x02" + b"\x00" * 60, "unknown version 2"),
    ],
)
def test_malformed_blobs(tmp_path: Path, blob: bytes, message: str) -> None:
    with pytest.raises(CredentialError, match=re.escape(message)):
        Opener.load(tmp_path).open(blob, AAD)


def test_plaintext_that_is_not_utf8_is_refused_without_showing_it(tmp_path: Path) -> None:
    opener = Opener.load(tmp_path)
    key = X25519PrivateKey.from_private_bytes((tmp_path / PRIVATE_KEY_NAME).read_bytes())
    info = INFO_LABEL + b"\x00" + hashlib.sha256(AAD).digest()
    blob = b"\x01" + SUITE.encrypt(b"hunter2\xff", key.public_key(), info=info)
    with pytest.raises(CredentialError, match="no valid UTF-8") as err:
        opener.open(blob, AAD)
    assert "hunter2" not in error_text(err.value)


def test_secret_never_appears_in_errors(tmp_path: Path) -> None:
    blob = Sealer.load(tmp_path).seal(SECRET, AAD)
    opener = Opener.load(tmp_path)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    for bad_blob, aad in ((blob, OTHER_AAD), (tampered, AAD)):
        with pytest.raises(CredentialError) as err:
            opener.open(bad_blob, aad)
        assert SECRET not in error_text(err.value)
        assert "horse" not in error_text(err.value)
    not_text = SECRET.replace(" ", "\ud800")
    with pytest.raises(CredentialError, match="unpaired surrogate") as err:
        Sealer.load(tmp_path).seal(not_text, AAD)
    assert "horse" not in error_text(err.value)


def test_repr_shows_no_key_material(tmp_path: Path) -> None:
    sealer, opener = Sealer.load(tmp_path), Opener.load(tmp_path)
    private = (tmp_path / PRIVATE_KEY_NAME).read_bytes()
    public = (tmp_path / PUBLIC_KEY_NAME).read_bytes()
    for obj in (sealer, opener, opener.sealer()):
        text = repr(obj) + str(obj)
        assert str(tmp_path) in text
        for key in (private, public):
            assert key.hex() not in text and key.hex().upper() not in text and repr(key) not in text
    assert not hasattr(opener, "__dict__")  # __slots__: no vars() to dump either


# --- key files --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o000, 0o077])
def test_key_files_get_exact_modes_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    with umask(mask):
        Sealer.load(tmp_path / "d")
    assert mode(tmp_path / "d" / PRIVATE_KEY_NAME) == 0o600
    assert mode(tmp_path / "d" / PUBLIC_KEY_NAME) == 0o644
    assert len((tmp_path / "d" / PRIVATE_KEY_NAME).read_bytes()) == 32
    assert len((tmp_path / "d" / PUBLIC_KEY_NAME).read_bytes()) == 32
    assert not list((tmp_path / "d").glob(".*.tmp"))


def test_opener_creates_with_the_same_modes(tmp_path: Path) -> None:
    Opener.load(tmp_path)
    assert mode(tmp_path / PRIVATE_KEY_NAME) == 0o600
    assert mode(tmp_path / PUBLIC_KEY_NAME) == 0o644


def test_private_key_is_never_readable_by_others_even_briefly(tmp_path: Path) -> None:
    """Watch the system calls: the private key's bytes only ever go to a file created O_EXCL with 0600,
    which is renamed into place; and the Sealer never opens the private key."""
    trace = tmp_path / "trace"
    data = tmp_path / "data"
    code = "import sys, pathlib, edge.credentials as c; c.Sealer.load(pathlib.Path(sys.argv[1]))"
    syscalls = "trace=openat,open,creat,rename,renameat,renameat2,chmod,fchmod,fchmodat"
    with umask(0):
        subprocess.run(
            ["strace", "-f", "-qq", "-e", syscalls, "-o", str(trace), sys.executable, "-c", code, str(data)],
            check=True,
        )
    calls = [line for line in trace.read_text().splitlines() if "credentials.key" in line]
    opens = [c for c in calls if "open" in c]
    assert len(opens) == 1, calls
    assert "O_CREAT|O_EXCL" in opens[0] and ", 0600)" in opens[0], opens[0]
    assert f'"{data}/.credentials.key.' in opens[0] and '.tmp"' in opens[0]
    assert any("rename" in c and f'"{data / PRIVATE_KEY_NAME}")' in c for c in calls), calls
    assert not [c for c in calls if "chmod" in c and "0600" not in c]
    assert mode(data / PRIVATE_KEY_NAME) == 0o600


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_private_key_open_to_others_is_refused(tmp_path: Path, bad_mode: int) -> None:
    Opener.load(tmp_path)
    key_path = tmp_path / PRIVATE_KEY_NAME
    key_path.chmod(bad_mode)
    with pytest.raises(CredentialError) as err:
        Opener.load(tmp_path)
    assert str(key_path) in str(err.value)
    assert f"{bad_mode:04o}" in str(err.value)
    assert mode(key_path) == bad_mode  # refused, not silently fixed


def test_public_key_others_may_change_is_refused_then_repaired(tmp_path: Path) -> None:
    Opener.load(tmp_path)
    public_path = tmp_path / PUBLIC_KEY_NAME
    public_path.chmod(0o666)
    with pytest.raises(
        CredentialError, match=f"refusing public key {re.escape(str(public_path))}: mode 0666"
    ):
        Sealer.load(tmp_path)
    Opener.load(tmp_path)  # the daemon writes it again from the private key
    assert mode(public_path) == 0o644
    assert Opener.load(tmp_path).open(Sealer.load(tmp_path).seal(SECRET, AAD), AAD) == SECRET


def test_unwritable_data_dir_is_a_credential_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(CredentialError, match="cannot create data directory"):
        Sealer.load(tmp_path / "file" / "data")


def test_private_key_mode_0400_is_fine(tmp_path: Path) -> None:
    blob = Sealer.load(tmp_path).seal(SECRET, AAD)
    (tmp_path / PRIVATE_KEY_NAME).chmod(0o400)
    assert Opener.load(tmp_path).open(blob, AAD) == SECRET


def test_private_key_symlink_is_refused(tmp_path: Path) -> None:
    Opener.load(tmp_path / "real")
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / PRIVATE_KEY_NAME).symlink_to(tmp_path / "real" / PRIVATE_KEY_NAME)
    with pytest.raises(CredentialError, match="cannot read"):
        Opener.load(tmp_path / "link")


def test_key_file_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    Opener.load(tmp_path)
    (tmp_path / PRIVATE_KEY_NAME).write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(CredentialError, match="not a raw 32-byte X25519 key"):
        Opener.load(tmp_path)


def test_sealer_needs_only_the_public_key(tmp_path: Path) -> None:
    Opener.load(tmp_path)
    key_bytes = (tmp_path / PRIVATE_KEY_NAME).read_bytes()
    (tmp_path / PRIVATE_KEY_NAME).unlink()
    blob = Sealer.load(tmp_path).seal(SECRET, AAD)  # the CLI's case: no private key in reach
    assert not (tmp_path / PRIVATE_KEY_NAME).exists()  # and it did not make a new pair
    opener = Opener(X25519PrivateKey.from_private_bytes(key_bytes))
    assert opener.open(blob, AAD) == SECRET


def test_sealer_refuses_when_only_the_private_key_is_left(tmp_path: Path) -> None:
    Opener.load(tmp_path)
    (tmp_path / PUBLIC_KEY_NAME).unlink()
    with pytest.raises(CredentialError, match="start the daemon once"):
        Sealer.load(tmp_path)
    Opener.load(tmp_path)  # the daemon writes it again
    blob = Sealer.load(tmp_path).seal(SECRET, AAD)
    assert Opener.load(tmp_path).open(blob, AAD) == SECRET


def test_opener_repairs_a_public_key_that_does_not_match(tmp_path: Path) -> None:
    Opener.load(tmp_path)
    (tmp_path / PUBLIC_KEY_NAME).write_bytes(os.urandom(32))
    Opener.load(tmp_path)
    blob = Sealer.load(tmp_path).seal(SECRET, AAD)
    assert Opener.load(tmp_path).open(blob, AAD) == SECRET
    assert mode(tmp_path / PUBLIC_KEY_NAME) == 0o644


def test_existing_pair_is_kept(tmp_path: Path) -> None:
    blob = Sealer.load(tmp_path).seal(SECRET, AAD)
    before = (tmp_path / PRIVATE_KEY_NAME).read_bytes()
    for _ in range(3):
        Sealer.load(tmp_path)
        Opener.load(tmp_path)
    assert (tmp_path / PRIVATE_KEY_NAME).read_bytes() == before
    assert Opener.load(tmp_path).open(blob, AAD) == SECRET


def test_stale_temporary_files_are_cleaned_up(tmp_path: Path) -> None:
    stale = tmp_path / f".{PRIVATE_KEY_NAME}.deadbeefdeadbeef.tmp"
    stale.write_bytes(b"x" * 32)
    Opener.load(tmp_path)
    assert not stale.exists()


def test_data_dir_is_created_private(tmp_path: Path) -> None:
    with umask(0):
        Sealer.load(tmp_path / "a" / "b")
    assert mode(tmp_path / "a" / "b") == 0o700


# --- concurrent first start -------------------------------------------------------------------------------


def _load_and_seal(args: tuple[str, str, int]) -> bytes:
    data_dir, which, _ = args
    if which == "opener":
        return Opener.load(Path(data_dir)).sealer().seal(SECRET, AAD)
    return Sealer.load(Path(data_dir)).seal(SECRET, AAD)


def _process_worker(
    data_dir: str, which: str, barrier: threading.Barrier, out: multiprocessing.Queue[bytes]
) -> None:
    barrier.wait()
    out.put(_load_and_seal((data_dir, which, 0)))


def test_concurrent_creation_by_threads_ends_with_one_pair(tmp_path: Path) -> None:
    for attempt in range(10):
        data_dir = tmp_path / str(attempt)
        barrier = threading.Barrier(8)

        def run(i: int, data_dir: Path = data_dir, barrier: threading.Barrier = barrier) -> bytes:
            barrier.wait()
            return _load_and_seal((str(data_dir), "opener" if i % 2 else "sealer", i))

        with ThreadPoolExecutor(8) as pool:
            blobs = list(pool.map(run, range(8)))
        opener = Opener.load(data_dir)
        assert [opener.open(b, AAD) for b in blobs] == [SECRET] * 8


def test_concurrent_creation_by_processes_ends_with_one_pair(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    count = 6
    for attempt in range(3):
        data_dir = tmp_path / str(attempt)
        barrier = ctx.Barrier(count)
        out: multiprocessing.Queue[bytes] = ctx.Queue()
        procs = [
            ctx.Process(
                target=_process_worker, args=(str(data_dir), "opener" if i % 2 else "sealer", barrier, out)
            )
            for i in range(count)
        ]
        for p in procs:
            p.start()
        blobs = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        opener = Opener.load(data_dir)
        assert [opener.open(b, AAD) for b in blobs] == [SECRET] * count
        assert mode(data_dir / PRIVATE_KEY_NAME) == 0o600
        assert sorted(p.name for p in data_dir.iterdir()) == [
            "credentials.key",
            "credentials.lock",
            "credentials.pub",
        ]
