"""RFC 6962 / RFC 9162 Merkle hashing and proofs (edge/merkle.py).

Known answers come from the transparency-dev reference implementation's test data (data copied, not code):
  [TD-CONST] github.com/transparency-dev/merkle testonly/constants.go (leaves, node hashes, roots 0..8)
  [TD-VERIFY] github.com/transparency-dev/merkle proof/verify_test.go (inclusion/consistency proofs)
  [TD-REF] github.com/transparency-dev/merkle testonly/reference_test.go (more inclusion/consistency proofs)
  [TD-NODES] github.com/transparency-dev/merkle proof/proof_test.go (which nodes make up a proof, for trees
             up to size 95; written here as the leaf ranges those nodes cover)
  [TD-HASH] github.com/transparency-dev/merkle rfc6962/rfc6962_test.go (leaf and node hash vectors)
  [TD-JSON] github.com/transparency-dev/merkle testdata/consistency/{3,4}/happy-path.json
Everything else is checked against the RFC's recursive definitions (MTH, PATH, SUBPROOF) written out here.
"""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import merkle
from edge.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    range_root,
    root_from,
    subtrees,
    verify_consistency,
    verify_inclusion,
)

h = bytes.fromhex

# [TD-CONST] LeafInputs()
LEAF_INPUTS = [
    h(""),
    h("00"),
    h("10"),
    h("2021"),
    h("3031"),
    h("40414243"),
    h("5051525354555657"),
    h("606162636465666768696a6b6c6d6e6f"),
]
LEAVES = [leaf_hash(e) for e in LEAF_INPUTS]

# [TD-CONST] NodeHashes(): level -> index -> hash of the perfect subtree.
NODE_HASHES = [
    [
        h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
        h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
        h("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
        h("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
        h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        h("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
        h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
        h("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
    ],
    [
        h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
        h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
        h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
    ],
    [
        h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
    ],
    [h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")],
]

# [TD-CONST] RootHashes(), indexed by tree size 0..8.
ROOTS = [
    h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    h("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    h("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    h("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    h("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
]

# (leaf index, tree size, proof). [TD-VERIFY] numbers leaves from 1; converted to 0-based here.
INCLUSION_PROOFS = [
    (0, 1, []),  # [TD-REF]
    (0, 2, [h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7")]),  # [TD-REF]
    (1, 2, [h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")]),  # [TD-REF]
    (2, 3, [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),  # [TD-VERIFY] [TD-REF]
    (
        1,
        5,
        [
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),  # [TD-VERIFY] [TD-REF]
    (
        0,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),  # [TD-VERIFY] [TD-REF]
    (
        5,
        8,
        [
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),  # [TD-VERIFY] [TD-REF]
]

# (old size, new size, proof). [TD-VERIFY], [TD-REF], [TD-JSON].
CONSISTENCY_PROOFS = [
    (1, 1, []),
    (
        1,
        8,
        [
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        5,
        [
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        7,
        [
            h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]

# [TD-JSON] the same two proofs as base64, with their roots: (size1, size2, root1, root2, proof).
CONSISTENCY_JSON = [
    (
        2,
        5,
        "+sVCA+fMaWzw38tCySodnbr3CtnmIfS9jZhmLwDjwSU=",
        "Tju7H3tHjc/nH7YxYxUZo7yhLJrvyhYSv85ME6hiZNQ=",
        ["Xwg/ChozygdqlSeYMlgNs+DvRYS9/x9UyKNg9Q3jAx4=", "vBoGQ7EuTS18d5GPROD095qDi2z57FtcKD4fTYhZnms="],
    ),
    (
        6,
        7,
        "duZ9rbzfHhDht03cYIq9L5jfsW+851J3tSMqEn8gh+8=",
        "3bib5AOAnjJXUNPSY814kpwpQreUKjS3fhIslZSnTIw=",
        [
            "DrxdNDf74tsVi58Sah0RjjCBgQMdCpSfje3t68VY72o=",
            "sIaT7C5yFZcTBkHoIR5+7cy0wmQTlj7ubB4u0W/7Gl8=",
            "037kGJdt2VdTwcc4Yrk5j6Kiz5tP8P3+izDNlSCWFLc=",
        ],
    ),
]

# [TD-NODES] TestInclusion: (size, index) -> the leaf ranges [begin, end) whose MTH make up the proof, in
# proof order. A node id (level, i) covers [i << level, (i + 1) << level); a "rehash" run of ids is the one
# ephemeral node over their union (e.g. for size 7, ids j=(0,6) and i=(1,2) rehash to l = [4, 7)).
INCLUSION_NODES = {
    (1, 0): [],
    (2, 0): [(1, 2)],
    (2, 1): [(0, 1)],
    (3, 1): [(0, 1), (2, 3)],
    (7, 0): [(1, 2), (2, 4), (4, 7)],
    (7, 1): [(0, 1), (2, 4), (4, 7)],
    (7, 2): [(3, 4), (0, 2), (4, 7)],
    (7, 3): [(2, 3), (0, 2), (4, 7)],
    (7, 4): [(5, 6), (6, 7), (0, 4)],
    (7, 5): [(4, 5), (6, 7), (0, 4)],
    (7, 6): [(4, 6), (0, 4)],
    (4, 2): [(3, 4), (0, 2)],
    (5, 3): [(2, 3), (0, 2), (4, 5)],
    (6, 3): [(2, 3), (0, 2), (4, 6)],
    (6, 4): [(5, 6), (0, 4)],
    (15, 10): [(11, 12), (8, 10), (12, 15), (0, 8)],
    (31, 24): [(25, 26), (26, 28), (28, 31), (16, 24), (0, 16)],
    (95, 81): [(80, 81), (82, 84), (84, 88), (88, 95), (64, 80), (0, 64)],
}

# [TD-NODES] TestConsistency: (size1, size2) -> leaf ranges, as above.
CONSISTENCY_NODES = {
    (1, 2): [(1, 2)],
    (1, 4): [(1, 2), (2, 4)],
    (1, 6): [(1, 2), (2, 4), (4, 6)],
    (2, 3): [(2, 3)],
    (2, 8): [(2, 4), (4, 8)],
    (3, 7): [(2, 3), (3, 4), (0, 2), (4, 7)],
    (4, 7): [(4, 7)],
    (5, 7): [(4, 5), (5, 6), (6, 7), (0, 4)],
    (6, 7): [(4, 6), (6, 7), (0, 4)],
    (7, 8): [(6, 7), (7, 8), (4, 6), (0, 4)],
    (1, 1): [],
    (2, 2): [],
    (3, 3): [],
    (4, 4): [],
    (5, 5): [],
    (7, 7): [],
    (8, 8): [],
    (2, 4): [(2, 4)],
    (3, 5): [(2, 3), (3, 4), (0, 2), (4, 5)],
    (3, 6): [(2, 3), (3, 4), (0, 2), (4, 6)],
    (4, 6): [(4, 6)],
    (1, 7): [(1, 2), (2, 4), (4, 7)],
    (10, 15): [(8, 10), (10, 12), (12, 15), (0, 8)],
    (24, 31): [(16, 24), (24, 31), (0, 16)],
    (81, 95): [(80, 81), (81, 82), (82, 84), (84, 88), (88, 95), (64, 80), (0, 64)],
}

SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")  # [TD-VERIFY]


# --- a log the way the audit store will keep one: leaf hashes plus the nodes append() reports ---------


class Log:
    def __init__(self, entries: Sequence[bytes] = ()) -> None:
        self.entries: list[bytes] = []
        self.leaves: list[bytes] = []
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.frontier = Frontier.empty()
        self.roots = [EMPTY_ROOT]  # root at every size
        self.lookups = 0
        for e in entries:
            self.add(e)

    def add(self, entry: bytes) -> list[tuple[int, int, bytes]]:
        leaf = leaf_hash(entry)
        self.nodes[(0, len(self.leaves))] = leaf
        self.entries.append(entry)
        self.leaves.append(leaf)
        done = self.frontier.append(leaf)
        for level, index, value in done:
            assert (level, index) not in self.nodes
            self.nodes[(level, index)] = value
        self.roots.append(self.frontier.root())
        return done

    def get_node(self, level: int, index: int) -> bytes:
        self.lookups += 1
        return self.nodes[(level, index)]


def numbered(n: int) -> list[bytes]:
    return [f"entry {i}".encode() for i in range(n)]


# --- the RFC's recursive definitions, written out as the reference ------------------------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 2.1.3.1 PATH(m, D[n]) over leaf hashes."""
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), root_from(d[k:])]
    return [*ref_path(m - k, d[k:]), root_from(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """RFC 9162 2.1.4.1 SUBPROOF(m, D[n], b) over leaf hashes."""
    n = len(d)
    if m == n:
        return [] if b else [root_from(d)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), root_from(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), root_from(d[:k])]


def _any_node(level: int, index: int) -> bytes:
    return SOME_HASH


def flip(value: bytes, bit: int) -> bytes:
    out = bytearray(value)
    out[bit // 8 % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


# --- hashing ------------------------------------------------------------------------------------------


def test_hash_vectors() -> None:
    # [TD-HASH]
    assert h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == EMPTY_ROOT
    assert leaf_hash(b"") == h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
    assert leaf_hash(b"L123456") == h("395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56")
    node = h("aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb")
    assert node_hash(b"N123", b"N456") == node
    assert HASH_SIZE == 32
    # Domain separation: a node is not the leaf of its children's concatenation; order matters.
    a, b = leaf_hash(b"Hello"), leaf_hash(b"World")
    assert node_hash(a, b) != leaf_hash(a + b)
    assert node_hash(a, b) != node_hash(b, a)


def test_leaf_and_node_hashes_match_reference_tree() -> None:
    assert [leaf_hash(e) for e in LEAF_INPUTS] == NODE_HASHES[0]
    log = Log(LEAF_INPUTS)
    for level, row in enumerate(NODE_HASHES):
        for index, value in enumerate(row):
            assert log.nodes[(level, index)] == value, (level, index)
    assert len(log.nodes) == sum(len(row) for row in NODE_HASHES)


def test_roots_for_every_size() -> None:
    for size in range(len(ROOTS)):
        assert root_from(LEAVES[:size]) == ROOTS[size], size
    log = Log(LEAF_INPUTS)
    assert log.roots == ROOTS


# --- subtrees, frontier ----------------------------------------------------------------------------


def test_subtrees() -> None:
    assert subtrees(0) == []
    assert subtrees(1) == [(0, 0)]
    assert subtrees(7) == [(2, 0), (1, 2), (0, 6)]
    assert subtrees(8) == [(3, 0)]
    assert subtrees(95) == [(6, 0), (4, 4), (3, 10), (2, 22), (1, 46), (0, 94)]
    for size in range(300):
        covered = 0
        for level, index in subtrees(size):
            assert index << level == covered  # contiguous, aligned, left to right, shrinking
            covered += 1 << level
        assert covered == size
    with pytest.raises(ValueError):
        subtrees(-1)


def test_frontier_kat_compact_trees() -> None:
    # [TD-CONST] CompactTrees(): the frontier hashes after each append.
    nh = NODE_HASHES
    expected = [
        [],
        [nh[0][0]],
        [nh[1][0]],
        [nh[1][0], nh[0][2]],
        [nh[2][0]],
        [nh[2][0], nh[0][4]],
        [nh[2][0], nh[1][2]],
        [nh[2][0], nh[1][2], nh[0][6]],
        [nh[3][0]],
    ]
    f = Frontier.empty()
    assert f.hashes == expected[0] and f.root() == EMPTY_ROOT
    for size, leaf in enumerate(LEAVES, start=1):
        f.append(leaf)
        assert f.size == size and f.hashes == expected[size] and f.root() == ROOTS[size]


def test_frontier_incremental_equals_reference_and_reports_exactly_the_perfect_nodes() -> None:
    n = 300
    log = Log()
    reported: list[tuple[int, int]] = []
    for size in range(1, n + 1):
        done = log.add(f"e{size}".encode())
        reported += [(level, index) for level, index, _ in done]
        # Newly completed nodes: exactly those ending at this size, lowest first.
        expected = [(lv, (size >> lv) - 1) for lv in range(1, size.bit_length()) if size % (1 << lv) == 0]
        assert [(lv, i) for lv, i, _ in done] == expected
        assert log.frontier.root() == root_from(log.leaves), size
        assert log.frontier == Frontier.load(size, log.get_node)
    # Over the whole run: every perfect subtree of level >= 1, once each, with the right hash.
    perfect = {(lv, i) for lv in range(1, 9) for i in range(n >> lv)}
    assert sorted(reported) == sorted(perfect) and len(reported) == len(perfect)
    for lv, i in perfect:
        assert log.nodes[(lv, i)] == root_from(log.leaves[i << lv : (i + 1) << lv])


def test_frontier_load_is_log_lookups_and_extend_matches_append() -> None:
    log = Log(numbered(1000))
    for size in (0, 1, 511, 512, 513, 999, 1000):
        log.lookups = 0
        f = Frontier.load(size, log.get_node)
        assert log.lookups == size.bit_count()
        assert f.root() == log.roots[size]
        g = Frontier.empty()
        g.extend(log.leaves[:size])
        assert g == f
        # Extending a loaded frontier continues the same tree.
        f.extend(log.leaves[size:])
        assert f.root() == log.roots[1000]


def test_frontier_copy_is_independent_and_validates() -> None:
    f = Frontier.empty()
    f.extend(LEAVES[:5])
    g = f.copy()
    g.append(LEAVES[5])
    assert f.size == 5 and f.root() == ROOTS[5]
    assert g.size == 6 and g.root() == ROOTS[6]
    assert f != g
    assert f != f.hashes and Frontier.empty() == Frontier(0, [])
    assert "size=5" in repr(f)
    with pytest.raises(ValueError):
        Frontier(3, [LEAVES[0]])  # size 3 needs two hashes
    with pytest.raises(ValueError):
        Frontier(1, [b"short"])
    with pytest.raises(ValueError):
        f.append(b"x" * 31)
    with pytest.raises(ValueError):
        f.extend([LEAVES[0], b"x" * 33])
    # The good leaf before the bad one stays appended, and size and hashes agree.
    assert f.size == 6 and f.root() == root_from([*LEAVES[:5], LEAVES[0]])


# --- range_root ------------------------------------------------------------------------------------


def test_range_root_every_range() -> None:
    log = Log(numbered(64))
    for begin in range(64):
        for end in range(begin + 1, 65):
            log.lookups = 0
            assert range_root(begin, end, log.get_node) == root_from(log.leaves[begin:end]), (begin, end)
            n = end - begin
            if begin % (1 << (n - 1).bit_length()) == 0:
                assert log.lookups == n.bit_count()  # aligned: one lookup per perfect subtree
    for begin, end in ((0, 0), (5, 3), (-1, 2)):
        with pytest.raises(ValueError):
            range_root(begin, end, log.get_node)


# --- proofs: known answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_PROOFS)
def test_inclusion_kat(index: int, size: int, proof: list[bytes]) -> None:
    log = Log(LEAF_INPUTS)
    assert inclusion_proof(index, size, log.get_node) == proof
    assert ref_path(index, LEAVES[:size]) == proof
    assert verify_inclusion(LEAVES[index], index, size, proof, ROOTS[size])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_PROOFS)
def test_consistency_kat(old: int, new: int, proof: list[bytes]) -> None:
    log = Log(LEAF_INPUTS)
    assert consistency_proof(old, new, log.get_node) == proof
    assert verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)


@pytest.mark.parametrize(("old", "new", "root1", "root2", "proof"), CONSISTENCY_JSON)
def test_consistency_kat_json(old: int, new: int, root1: str, root2: str, proof: list[str]) -> None:
    b64 = base64.b64decode
    assert b64(root1) == ROOTS[old] and b64(root2) == ROOTS[new]
    assert consistency_proof(old, new, Log(LEAF_INPUTS).get_node) == [b64(p) for p in proof]
    assert verify_consistency(old, new, b64(root1), b64(root2), [b64(p) for p in proof])


@pytest.mark.parametrize(("size", "index"), sorted(INCLUSION_NODES))
def test_inclusion_proof_structure(size: int, index: int) -> None:
    log = Log(numbered(size))
    expected = [root_from(log.leaves[b:e]) for b, e in INCLUSION_NODES[(size, index)]]
    log.lookups = 0
    proof = inclusion_proof(index, size, log.get_node)
    assert proof == expected
    assert log.lookups <= 2 * size.bit_length()
    assert verify_inclusion(log.leaves[index], index, size, proof, log.roots[size])


@pytest.mark.parametrize(("old", "new"), sorted(CONSISTENCY_NODES))
def test_consistency_proof_structure(old: int, new: int) -> None:
    log = Log(numbered(new))
    expected = [root_from(log.leaves[b:e]) for b, e in CONSISTENCY_NODES[(old, new)]]
    log.lookups = 0
    proof = consistency_proof(old, new, log.get_node)
    assert proof == expected
    assert log.lookups <= 2 * new.bit_length() + 1
    assert verify_consistency(old, new, log.roots[old], log.roots[new], proof)


def _inclusion_probes(
    index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[str, int, int, list[bytes], bytes, bytes]]:
    # The corruptions of [TD-VERIFY] corruptInclusionProof.
    probes = [
        ("index - 1", index - 1, size, proof, root, leaf),
        ("index + 1", index + 1, size, proof, root, leaf),
        ("index ^ 2", index ^ 2, size, proof, root, leaf),
        ("size * 2", index, size * 2, proof, root, leaf),
        ("size / 2", index, size // 2, proof, root, leaf),
        ("wrong leaf", index, size, proof, root, b"WrongLeaf"),
        ("empty root", index, size, proof, EMPTY_ROOT, leaf),
        ("random root", index, size, proof, SOME_HASH, leaf),
        ("trailing garbage", index, size, [*proof, b""], root, leaf),
        ("trailing root", index, size, [*proof, root], root, leaf),
        ("preceding garbage", index, size, [b"", *proof], root, leaf),
        ("preceding root", index, size, [root, *proof], root, leaf),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = flip(bad[i], 3)
        probes.append((f"proof[{i}] bit 3", index, size, bad, root, leaf))
    if proof:
        probes.append(("removed component", index, size, proof[:-1], root, leaf))
    if len(proof) > 1:
        probes.append(("inserted component", index, size, [proof[0], SOME_HASH, *proof[1:]], root, leaf))
    return probes


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_PROOFS[1:])
def test_inclusion_kat_corruptions_fail(index: int, size: int, proof: list[bytes]) -> None:
    for desc, i, s, p, root, leaf in _inclusion_probes(index, size, proof, ROOTS[size], LEAVES[index]):
        assert not verify_inclusion(leaf, i, s, p, root), desc


@pytest.mark.parametrize(("old", "new", "proof"), [c for c in CONSISTENCY_PROOFS if c[2]])
def test_consistency_kat_corruptions_fail(old: int, new: int, proof: list[bytes]) -> None:
    r1, r2 = ROOTS[old], ROOTS[new]
    # The corruptions of [TD-VERIFY] corruptConsistencyProof.
    probes = [
        ("old - 1", old - 1, new, r1, r2, proof),
        ("old + 1", old + 1, new, r1, r2, proof),
        ("old ^ 2", old ^ 2, new, r1, r2, proof),
        ("new * 2", old, new * 2, r1, r2, proof),
        ("new / 2", old, new // 2, r1, r2, proof),
        ("wrong root1", old, new, b"WrongRoot", r2, proof),
        ("wrong root2", old, new, r1, b"WrongRoot", proof),
        ("swapped roots", old, new, r2, r1, proof),
        ("empty proof", old, new, r1, r2, []),
        ("trailing garbage", old, new, r1, r2, [*proof, b""]),
        ("trailing root1", old, new, r1, r2, [*proof, r1]),
        ("trailing root2", old, new, r1, r2, [*proof, r2]),
        ("preceding garbage", old, new, r1, r2, [b"", *proof]),
        ("preceding root1", old, new, r1, r2, [r1, *proof]),
        ("preceding root2", old, new, r1, r2, [r2, *proof]),
        ("preceding proof[0]", old, new, r1, r2, [proof[0], *proof]),
        ("truncated", old, new, r1, r2, proof[:-1]),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = flip(bad[i], 4)
        probes.append((f"proof[{i}] bit 4", old, new, r1, r2, bad))
    for desc, s1, s2, root1, root2, p in probes:
        assert not verify_consistency(s1, s2, root1, root2, p), desc


def test_verify_inclusion_edge_cases() -> None:
    # [TD-VERIFY] TestVerifyInclusion / TestVerifyInclusionSingleEntry
    for index, size in ((0, 0), (0, 1), (1, 0), (2, 1)):
        assert not verify_inclusion(SOME_HASH, index, size, [], b"")
        assert not verify_inclusion(b"", index, size, [], EMPTY_ROOT)
        assert not verify_inclusion(SOME_HASH, index, size, [], EMPTY_ROOT)
    one = leaf_hash(b"data")
    assert verify_inclusion(one, 0, 1, [], one)  # a one-leaf tree's root is its leaf
    assert not verify_inclusion(one, 0, 1, [], b"")
    assert not verify_inclusion(b"", 0, 1, [], one)
    assert not verify_inclusion(b"", 0, 1, [], b"")


def test_verify_consistency_edge_cases() -> None:
    # [TD-VERIFY] TestVerifyConsistency, except that a size-0 tree must have the empty root here.
    r1, r2 = leaf_hash(b"don't care 1"), leaf_hash(b"don't care 2")
    cases = [
        (0, 0, r1, r2, [], False),
        (1, 1, r1, r2, [], False),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [], True),
        (0, 1, EMPTY_ROOT, r2, [], True),
        (0, 1, r1, r2, [], False),  # [TD-VERIFY] accepts any root for size 0; we do not
        (0, 0, r1, r1, [], False),  # likewise
        (1, 1, r2, r2, [], True),
        (1, 0, r1, r2, [], False),  # time travel to the past
        (2, 1, r1, r2, [], False),
        (1, 2, r1, r2, [], False),  # empty proof
        (0, 0, EMPTY_ROOT, r2, [], False),
        (1, 1, EMPTY_ROOT, r2, [], False),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),  # roots match, proof not empty
        (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
    ]
    for s1, s2, root1, root2, proof, want in cases:
        assert verify_consistency(s1, s2, root1, root2, proof) is want, (s1, s2)


def test_verifiers_never_raise_on_malformed_input() -> None:
    log = Log(numbered(13))
    leaf, root = log.leaves[5], log.roots[13]
    proof = inclusion_proof(5, 13, log.get_node)
    assert verify_inclusion(leaf, 5, 13, proof, root)
    assert verify_inclusion(leaf, 5, 13, tuple(proof), root)  # any sequence will do
    bad_calls: list[Callable[[], bool]] = [
        lambda: verify_inclusion(leaf, 5, 13, [*proof[:-1], proof[-1][:31]], root),  # short hash
        lambda: verify_inclusion(leaf, 5, 13, [*proof[:-1], proof[-1] + b"\0"], root),  # long hash
        lambda: verify_inclusion(leaf, -1, 13, proof, root),
        lambda: verify_inclusion(leaf, 5, -13, proof, root),
        lambda: verify_inclusion(leaf, 13, 13, proof, root),
        lambda: verify_inclusion(leaf, 5, 13, b"".join(proof), root),  # type: ignore[arg-type]
        lambda: verify_inclusion(leaf, 5, 13, [*proof[:-1], None], root),  # type: ignore[list-item]
        lambda: verify_inclusion(leaf, 5, 13, None, root),  # type: ignore[arg-type]
        lambda: verify_inclusion(leaf, 5.0, 13, proof, root),  # type: ignore[arg-type]
        lambda: verify_inclusion(leaf, True, 13, proof, root),
        lambda: verify_inclusion(leaf, 5, 13, proof * 100, root),  # absurdly long
        lambda: verify_inclusion(leaf, 5, 1 << 70, proof, root),
        lambda: verify_inclusion(leaf[:31], 5, 13, proof, root),
        lambda: verify_inclusion(leaf, 5, 13, proof, root[:31]),
        lambda: verify_inclusion(None, 5, 13, proof, root),  # type: ignore[arg-type]
    ]
    cproof = consistency_proof(5, 13, log.get_node)
    r5 = log.roots[5]
    assert verify_consistency(5, 13, r5, root, cproof)
    bad_calls += [
        lambda: verify_consistency(13, 5, root, r5, cproof),
        lambda: verify_consistency(5, 13, r5, root, [*cproof[:-1], cproof[-1][:16]]),
        lambda: verify_consistency(5, 13, r5[:31], root, cproof),
        lambda: verify_consistency(5, 13, r5, root + b"\0", cproof),
        lambda: verify_consistency(-5, 13, r5, root, cproof),
        lambda: verify_consistency(5, 13, r5, root, "not a proof"),  # type: ignore[arg-type]
        lambda: verify_consistency(5, 13, r5, root, cproof * 50),
        lambda: verify_consistency(5, 1 << 80, r5, root, cproof),
    ]
    for i, call in enumerate(bad_calls):
        assert call() is False, i


def test_proof_generation_rejects_bad_sizes() -> None:
    log = Log(numbered(4))
    for index, size in ((0, 0), (4, 4), (-1, 4), (5, 4)):
        with pytest.raises(ValueError):
            inclusion_proof(index, size, log.get_node)
    for old, new in ((5, 4), (-1, 4)):
        with pytest.raises(ValueError):
            consistency_proof(old, new, log.get_node)
    assert consistency_proof(0, 4, log.get_node) == []
    assert consistency_proof(4, 4, log.get_node) == []


# --- proofs: exhaustive against the RFC definitions ----------------------------------------------------


def test_every_proof_in_small_trees_matches_the_rfc_definitions() -> None:
    n = 70
    log = Log(numbered(n))
    for size in range(1, n + 1):
        d = log.leaves[:size]
        for index in range(size):
            proof = inclusion_proof(index, size, log.get_node)
            assert proof == ref_path(index, d), (index, size)
            assert verify_inclusion(d[index], index, size, proof, log.roots[size])
        for old in range(1, size + 1):
            proof = consistency_proof(old, size, log.get_node)
            assert proof == ref_subproof(old, d, True), (old, size)
            assert verify_consistency(old, size, log.roots[old], log.roots[size], proof)


def test_proofs_in_a_big_tree_take_log_lookups() -> None:
    # A synthetic store for a tree of 2**40 leaves: hashes are made up, only the lookup count matters.
    def get_node(level: int, index: int) -> bytes:
        calls.append((level, index))
        return node_hash(level.to_bytes(8, "big"), index.to_bytes(8, "big"))

    rng = random.Random(4)
    for _ in range(200):
        size = rng.randrange(1, 1 << 40)
        calls: list[tuple[int, int]] = []
        proof = inclusion_proof(rng.randrange(size), size, get_node)
        assert len(proof) <= 40 and len(calls) <= 2 * 41
        old = rng.randrange(size + 1)
        calls = []
        proof = consistency_proof(old, size, get_node)
        assert len(proof) <= 42 and len(calls) <= 2 * 41 + 1
        for level, index in calls:  # only perfect subtrees inside the tree
            assert (index + 1) << level <= size


# --- properties ------------------------------------------------------------------------------------


@st.composite
def logs(draw: st.DrawFn) -> list[bytes]:
    """1..300 distinct entries of random content.

    Entries are distinct, as audit entries are (each carries its sequence number): with duplicate entries a
    proof for one copy is also a proof for the other, which is correct behaviour, not a forgery. The size is
    drawn on its own so that big logs are as likely as small ones.
    """
    n = draw(st.integers(1, 300), "log size")
    bodies = draw(st.lists(st.binary(max_size=12), max_size=n), "entry bodies")
    return [i.to_bytes(2, "big") + (bodies[i] if i < len(bodies) else b"") for i in range(n)]


LOGS = logs()


@settings(max_examples=60, deadline=None)
@given(entries=LOGS, data=st.data())
def test_property_inclusion(entries: list[bytes], data: st.DataObject) -> None:
    log = Log(entries)
    n = len(entries)
    proofs = [inclusion_proof(i, n, log.get_node) for i in range(n)]
    for i in range(n):
        assert verify_inclusion(log.leaves[i], i, n, proofs[i], log.roots[n]), i
    for i in data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=8, unique=True), "indexes"):
        proof, leaf, root = proofs[i], log.leaves[i], log.roots[n]
        # One flipped bit anywhere in the entry.
        entry = entries[i] or b"\0"
        bit = data.draw(st.integers(0, 8 * len(entry) - 1), "entry bit")
        changed = flip(entry, bit) if entries[i] else b"\0"
        assert not verify_inclusion(leaf_hash(changed), i, n, proof, root)
        # One flipped bit in each proof hash.
        for j in range(len(proof)):
            bad = list(proof)
            bad[j] = flip(bad[j], data.draw(st.integers(0, 255), "proof bit"))
            assert not verify_inclusion(leaf, i, n, bad, root), (i, j)
        # Another index: the entry is not there.
        for other in {i - 1, i + 1, i ^ 1, i ^ 2, data.draw(st.integers(0, n - 1), "other index")}:
            if other != i:
                assert not verify_inclusion(leaf, other, n, proof, root), (i, other)
        # Another tree (size, root) — as a signed checkpoint would claim it: only its own proof verifies.
        for size in {i + 1, n - 1, n + 1, 2 * n, n // 2, data.draw(st.integers(1, 2 * n), "other size")}:
            if size <= i or size == n:
                continue
            if size <= n:
                other_root = log.roots[size]
                same = proof == inclusion_proof(i, size, log.get_node)
            else:
                other_root, same = SOME_HASH, False
            assert verify_inclusion(leaf, i, size, proof, other_root) is same, (i, size)
            # Even with this tree's true root, a size whose proofs have another length does not verify. (The
            # proof alone does not pin the size: index 0 of sizes 3 and 4 share a shape. The signed
            # checkpoint binds size and root together, which is what the test above checks.)
            if len(inclusion_proof(i, size, _any_node)) != len(proof):
                assert not verify_inclusion(leaf, i, size, proof, root), (i, size)


@settings(max_examples=60, deadline=None)
@given(entries=LOGS, data=st.data())
def test_property_consistency(entries: list[bytes], data: st.DataObject) -> None:
    log = Log(entries)
    n = len(entries)
    for _ in range(10):
        new = data.draw(st.integers(1, n), "new")
        old = data.draw(st.integers(0, new), "old")
        proof = consistency_proof(old, new, log.get_node)
        r_old, r_new = log.roots[old], log.roots[new]
        assert proof == ref_subproof(old, log.leaves[:new], True) if old else proof == []
        assert verify_consistency(old, new, r_old, r_new, proof), (old, new)
        for j in range(len(proof)):
            bad = list(proof)
            bad[j] = flip(bad[j], data.draw(st.integers(0, 255), "proof bit"))
            assert not verify_consistency(old, new, r_old, r_new, bad), (old, new, j)
        # A rewritten history: change one entry below old (or below new), recompute the roots.
        if old:
            k = data.draw(st.integers(0, old - 1), "rewritten entry")
            forged = Log([*entries[:k], entries[k] + b"!", *entries[k + 1 : new]])
            if forged.roots[old] != r_old:
                assert not verify_consistency(old, new, forged.roots[old], r_new, proof)
            assert not verify_consistency(old, new, r_old, forged.roots[new], proof)
        # Other claimed sizes, each with its true root: only the proof for that pair verifies.
        for o2, n2 in {(old + 1, new), (old - 1, new), (old, new - 1), (old, new + 1), (old ^ 2, new)}:
            if (o2, n2) == (old, new) or not 0 <= o2 <= n2 <= n:
                continue
            same = proof == consistency_proof(o2, n2, log.get_node)
            assert verify_consistency(o2, n2, log.roots[o2], log.roots[n2], proof) is same, (old, new, o2, n2)


@settings(max_examples=40, deadline=None)
@given(entries=LOGS, cut=st.integers(0, 300))
def test_property_frontier_load_and_continue(entries: list[bytes], cut: int) -> None:
    # Restart in the middle: load the frontier from stored nodes and carry on appending.
    cut = min(cut, len(entries))
    first = Log(entries[:cut])
    f = Frontier.load(cut, first.get_node)
    assert f == first.frontier
    for e in entries[cut:]:
        f.append(leaf_hash(e))
    assert f.root() == root_from([leaf_hash(e) for e in entries])


# --- speed -----------------------------------------------------------------------------------------


def test_speed_smoke() -> None:
    # The real measurement is in the report; this only catches an accidental slowdown by a large factor.
    leaves = [leaf_hash(i.to_bytes(8, "big")) for i in range(100_000)]
    f = Frontier.empty()
    t0 = time.perf_counter()
    for leaf in leaves:
        f.append(leaf)
    per_append_us = (time.perf_counter() - t0) / len(leaves) * 1e6
    g = Frontier.empty()
    g.extend(leaves)
    assert g == f
    assert per_append_us < 10, per_append_us


def test_module_exports() -> None:
    assert set(merkle.__all__) <= set(dir(merkle))
