"""Helpers for tests that copy an open database directory as a crash would leave it."""

from __future__ import annotations


def settle_merges(db) -> None:
    """Wait until no background merge runs in any collection of ``db``: a copy of an open
    database directory, unlike a crash, takes time, and must not race a merge's files."""
    for name in db.list_collections():
        assert db.get_collection(name).wait_for_merges(30), f"merges of {name!r} never settled"
