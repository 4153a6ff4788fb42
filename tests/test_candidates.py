"""The candidates table: cameras seen on the LAN, refreshed, marked gone on Bye, bounded against floods."""

from __future__ import annotations

from pathlib import Path

from edge.store import MAX_CANDIDATES, Store


def test_seen_refreshed_gone_and_back(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    try:
        store.saw_candidate(
            key="urn:uuid:a", source="ws-discovery", address="10.0.0.5", now_utc_ns=1, name="Door"
        )
        store.saw_candidate(
            key="urn:uuid:a", source="ws-discovery", address="10.0.0.6", now_utc_ns=2, device_url="http://x/"
        )
        (c,) = store.candidates()
        # A later sighting updates the address and keeps what only the earlier one knew (the name).
        assert (c.address, c.name, c.device_url, c.first_seen_utc_ns, c.last_seen_utc_ns) == (
            "10.0.0.6", "Door", "http://x/", 1, 2,
        )  # fmt: skip
        assert store.candidate_gone("urn:uuid:a", now_utc_ns=3)
        assert not store.candidate_gone("urn:uuid:a", now_utc_ns=4)  # already gone
        assert not store.candidate_gone("urn:uuid:unknown", now_utc_ns=4)
        assert store.candidates()[0].gone_utc_ns == 3
        store.saw_candidate(key="urn:uuid:a", source="ws-discovery", address="10.0.0.6", now_utc_ns=5)
        assert store.candidates()[0].gone_utc_ns is None
    finally:
        store.close()


def test_a_flood_of_announcements_keeps_only_the_most_recent(tmp_path: Path) -> None:
    store = Store.open(tmp_path, durable=False)
    try:
        for i in range(MAX_CANDIDATES + 50):
            store.saw_candidate(key=f"urn:uuid:{i}", source="ws-discovery", address="10.0.0.9", now_utc_ns=i)
        keys = {c.key for c in store.candidates()}
        assert len(keys) == MAX_CANDIDATES
        assert "urn:uuid:0" not in keys and f"urn:uuid:{MAX_CANDIDATES + 49}" in keys
    finally:
        store.close()
