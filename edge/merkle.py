"""RFC 6962 / RFC 9162 Merkle tree hashing (SHA-256): incremental roots, inclusion and consistency proofs.

Pure functions, no I/O. Storage is the caller's: proofs and roots read node hashes through a ``GetNode``
callable that returns the hash of a *perfect aligned* subtree — level ``L``, index ``i`` covers leaves
``[i * 2**L, (i + 1) * 2**L)`` and level 0 holds the leaf hashes. Those are exactly the nodes
:meth:`Frontier.append` reports as completed, so a log that persists them can answer any proof with
O(log n) lookups and never rehashes the whole tree.

Verification (:func:`verify_inclusion`, :func:`verify_consistency`) follows RFC 9162 sections 2.1.3.2 and
2.1.4.2 step by step and returns ``False`` — never raises — for any malformed input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Final

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_PROOF_LENGTH",
    "Frontier",
    "GetNode",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "range_root",
    "root_from",
    "subtrees",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32
# A tree of up to 2**64 leaves has proofs of at most 64 hashes (consistency proofs at most 2 more).
MAX_PROOF_LENGTH: Final = 66

_sha256 = hashlib.sha256
EMPTY_ROOT: Final[bytes] = _sha256(b"").digest()

GetNode = Callable[[int, int], bytes]
"""``(level, index) -> hash`` of the perfect subtree over leaves ``[index << level, (index+1) << level)``."""


def leaf_hash(entry: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || entry)."""
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def subtrees(size: int) -> list[tuple[int, int]]:
    """The perfect aligned subtrees that decompose ``[0, size)``, left to right, as ``(level, index)``.

    One per set bit of ``size``, largest first: 7 = 4 + 2 + 1 gives ``[(2, 0), (1, 2), (0, 6)]``.
    """
    if size < 0:
        raise ValueError(f"negative tree size {size}")
    out: list[tuple[int, int]] = []
    begin = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            out.append((level, begin >> level))
            begin += 1 << level
    return out


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Fold subtree roots right to left into the RFC 6962 root of their concatenation."""
    if not hashes:
        return EMPTY_ROOT
    root = hashes[-1]
    for h in reversed(hashes[:-1]):
        root = _sha256(b"\x01" + h + root).digest()
    return root


class Frontier:
    """The compact range ``[0, size)``: the roots of :func:`subtrees` ``(size)``, left to right.

    Appending a leaf costs one SHA-256 per completed perfect subtree (amortised one), so building the tree
    of n leaves costs about 2n hashes in all, and the frontier is O(log n) hashes.
    """

    __slots__ = ("hashes", "size")

    def __init__(self, size: int, hashes: list[bytes]) -> None:
        if size < 0 or len(hashes) != size.bit_count():
            raise ValueError(f"a frontier of size {size} has {size.bit_count()} hashes, not {len(hashes)}")
        if any(len(h) != HASH_SIZE for h in hashes):
            raise ValueError(f"frontier hashes must be {HASH_SIZE} bytes")
        self.size = size
        self.hashes = hashes

    @classmethod
    def empty(cls) -> Frontier:
        return cls(0, [])

    @classmethod
    def load(cls, size: int, get_node: GetNode) -> Frontier:
        """Rebuild the frontier of ``[0, size)`` from stored nodes: one lookup per set bit of ``size``."""
        return cls(size, [get_node(level, index) for level, index in subtrees(size)])

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one *leaf hash*; return the perfect nodes this completed, as ``(level, index, hash)``.

        Only nodes of level >= 1 are returned (the leaf itself is the caller's), lowest level first. Persist
        them and :func:`inclusion_proof`, :func:`consistency_proof` and :meth:`load` can read them back.
        """
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, not {len(leaf)}")
        size = self.size
        hashes = self.hashes
        done: list[tuple[int, int, bytes]] = []
        node = leaf
        level = 0
        rest = size
        # Each trailing 1 bit of the old size is a perfect subtree the new leaf's subtree now pairs with.
        while rest & 1:
            node = _sha256(b"\x01" + hashes.pop() + node).digest()
            level += 1
            rest >>= 1
            done.append((level, size >> level, node))
        hashes.append(node)
        self.size = size + 1
        return done

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append many leaf hashes without reporting completed nodes (the fast path for verifying)."""
        size = self.size
        hashes = self.hashes
        sha256 = _sha256
        pop = hashes.pop
        push = hashes.append
        try:
            for leaf in leaves:
                if len(leaf) != HASH_SIZE:
                    raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, not {len(leaf)}")
                node = leaf
                rest = size
                while rest & 1:
                    node = sha256(b"\x01" + pop() + node).digest()
                    rest >>= 1
                push(node)
                size += 1
        finally:
            # Leaves appended before a bad one stay appended; size and hashes always agree.
            self.size = size

    def root(self) -> bytes:
        """RFC 6962 MTH of leaves ``[0, size)``."""
        return _fold(self.hashes)

    def copy(self) -> Frontier:
        return Frontier(self.size, list(self.hashes))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frontier):
            return NotImplemented
        return self.size == other.size and self.hashes == other.hashes

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Frontier(size={self.size}, root={self.root().hex()})"


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 6962: the largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def range_root(begin: int, end: int, get_node: GetNode) -> bytes:
    """RFC 6962 MTH of the leaves ``D[begin:end]`` (a subtree in the RFC's sense, as proofs use them).

    When ``begin`` is a multiple of the smallest power of two >= ``end - begin`` — true of every range a
    proof needs — the range is a left-to-right run of perfect aligned subtrees and this costs O(log n)
    lookups. Any other range is still answered correctly, by splitting as the RFC does, but may descend to
    the leaves.
    """
    if not 0 <= begin < end:
        raise ValueError(f"bad leaf range [{begin}, {end})")
    n = end - begin
    span = 1 << (n - 1).bit_length()  # smallest power of two >= n
    if begin % span == 0:
        hashes = []
        pos = begin
        for level in range(n.bit_length() - 1, -1, -1):
            if n >> level & 1:
                hashes.append(get_node(level, pos >> level))
                pos += 1 << level
        return _fold(hashes)
    k = _largest_power_of_two_below(n)
    return node_hash(range_root(begin, begin + k, get_node), range_root(begin + k, end, get_node))


def inclusion_proof(index: int, size: int, get_node: GetNode) -> list[bytes]:
    """RFC 9162 2.1.3.1 ``PATH(index, D[0:size])``: sibling hashes from the leaf up to the root."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    top_down: list[bytes] = []
    begin, end = 0, size
    while end - begin > 1:
        k = _largest_power_of_two_below(end - begin)
        if index < begin + k:
            top_down.append(range_root(begin + k, end, get_node))
            end = begin + k
        else:
            top_down.append(range_root(begin, begin + k, get_node))
            begin += k
    top_down.reverse()
    return top_down


def consistency_proof(old_size: int, new_size: int, get_node: GetNode) -> list[bytes]:
    """RFC 9162 2.1.4.1 ``PROOF(old_size, D[0:new_size])``; empty if ``old_size`` is 0 or ``new_size``."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return []
    top_down: list[bytes] = []
    begin, end = 0, new_size
    have_old_root = True  # the b of SUBPROOF: is [0, old_size) itself a node the verifier already holds?
    while old_size != end:
        k = _largest_power_of_two_below(end - begin)
        if old_size <= begin + k:
            top_down.append(range_root(begin + k, end, get_node))
            end = begin + k
        else:
            top_down.append(range_root(begin, begin + k, get_node))
            begin += k
            have_old_root = False
    if not have_old_root:
        top_down.append(range_root(begin, end, get_node))
    top_down.reverse()
    return top_down


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes | bytearray | memoryview) and len(value) == HASH_SIZE


def _well_formed(proof: object) -> bool:
    return (
        isinstance(proof, Sequence)
        and not isinstance(proof, bytes | bytearray | str)
        and len(proof) <= MAX_PROOF_LENGTH
        and all(_is_hash(p) for p in proof)
    )


def _is_size(value: object) -> bool:
    return type(value) is int and value >= 0


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2: does ``proof`` show leaf hash ``leaf`` at ``index`` in the tree ``(size, root)``?"""
    if not (_is_size(index) and _is_size(size) and _is_hash(leaf) and _is_hash(root) and _well_formed(proof)):
        return False
    if index >= size:
        return False
    fn, sn = index, size - 1
    r = bytes(leaf)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = _sha256(b"\x01" + p + r).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2: does ``(new_size, new_root)`` extend ``(old_size, old_root)`` by appending only?

    Equal sizes need equal roots and an empty proof. Size 0 is a prefix of every tree, but its root must be
    :data:`EMPTY_ROOT` (an empty-log checkpoint that claims another root is a prefix of nothing).
    """
    if not (
        _is_size(old_size)
        and _is_size(new_size)
        and _is_hash(old_root)
        and _is_hash(new_root)
        and _well_formed(proof)
    ):
        return False
    if old_size > new_size:
        return False
    if old_size == 0:
        return len(proof) == 0 and old_root == EMPTY_ROOT and (new_size > 0 or new_root == EMPTY_ROOT)
    if old_size == new_size:
        return len(proof) == 0 and old_root == new_root
    # 1. An empty path proves nothing.
    if not proof:
        return False
    path = list(proof)
    # 2. If the old tree is perfect, its root is the first node of the path.
    if old_size & (old_size - 1) == 0:
        path.insert(0, bytes(old_root))
    # 3-4. fn walks the old tree's last leaf, sn the new tree's; skip levels where fn is a right child.
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5-6. fr rebuilds the old root, sr the new one.
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = _sha256(b"\x01" + c + fr).digest()
            sr = _sha256(b"\x01" + c + sr).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = _sha256(b"\x01" + sr + c).digest()
        fn >>= 1
        sn >>= 1
    # 7.
    return sn == 0 and fr == old_root and sr == new_root


def root_from(leaves: Sequence[bytes]) -> bytes:
    """Reference RFC 6962 MTH over a list of *leaf hashes*, by the RFC's recursive definition.

    For tests and small trees; O(n) hashes and recursion depth O(log n).
    """
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return bytes(leaves[0])
    k = _largest_power_of_two_below(n)
    return node_hash(root_from(leaves[:k]), root_from(leaves[k:]))
