"""Fault injection on the on-disk format: every damage ends in recovery or DataLoss.

A pristine database (two ``flat``/``ip`` collections, each with sealed segments,
tombstone files and a write-ahead log of writes made after the last flush) is built
once per module as a crash image: the directory is copied while the database is still
open, so the log tail is never flushed. Each case copies that image, damages one file
and reopens it. The outcome must be one of

- recovery to exactly the state of a prefix of the logged writes (for a truncated log:
  exactly the complete frames that remain), with a RuntimeWarning when a torn tail was
  cut, after which the database takes new writes and reopens cleanly; or
- ``DataLoss`` from ``get_collection`` whose message names the damaged file, while the
  other collection opens and answers correctly,

never another exception and never a state that no prefix of the log explains. "Answers
correctly" means exact vectors (``get`` is exact for ``flat``), exact metadata, and
searches (plain, exhaustive and filtered) equal to brute force over the expected rows.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import vecstore
from tests.crash_image import settle_merges
from vecstore import DataLoss, NotFound
from vecstore.storage import wal
from vecstore.storage.files import crc32c, file_crc32c

DIM = 16
NAMES = ("alpha", "beta")
TARGET, OTHER = NAMES
# Writes logged after the last flush of each collection (one log record each).
N_LOGGED = 10

State = dict[int, tuple[np.ndarray, dict]]


# --- the pristine crash image -----------------------------------------------------------


@dataclass
class Image:
    """The pristine database directory and what every valid state of it holds."""

    root: Path
    # states[name][i]: the collection after the first i logged writes (0: the flushed state).
    states: dict[str, list[State]]
    # frames[i] .. frames[i + 1]: byte range of the i-th record of TARGET's log file.
    frames: list[int]
    wal_name: str
    segments: list[str]
    tombstones: list[str]

    def final(self, name: str) -> State:
        return self.states[name][-1]


class Model:
    """A collection and the plain-Python model of what it must hold, written together."""

    def __init__(self, collection):
        self.c = collection
        self.rows: State = {}

    def add(self, x, ids=None, meta=None, upsert=False):
        raw = np.asarray(x, dtype=np.float32)
        x = raw.reshape(-1, DIM)
        if upsert:
            got = self.c.upsert(raw, ids, meta)
        else:
            got = self.c.add(raw, ids=ids, metadata=meta)
        for i, vid in enumerate(got.tolist()):
            row_meta = {k: v[i] for k, v in (meta or {}).items() if v[i] is not None}
            self.rows[vid] = (x[i].copy(), row_meta)

    def delete(self, ids):
        present = [i for i in ids if i in self.rows]
        assert self.c.delete(ids) == len(set(present))
        for i in present:
            self.rows.pop(i, None)

    def snapshot(self) -> State:
        return dict(self.rows)


def _meta(rng, n, fields=("tag", "name"), start=0):
    out = {}
    if "tag" in fields:
        out["tag"] = [int(v) for v in rng.integers(0, 200, n)]
    if "name" in fields:
        out["name"] = [f"n{start + i}" if i % 7 else None for i in range(n)]
    if "color" in fields:
        out["color"] = [["red", "green", "blue"][i % 3] for i in range(n)]
    return out


def _populate(model: Model, rng, base: int) -> list[State]:
    """Flushed segments with tombstones, then N_LOGGED logged writes; the states."""
    c = model.c
    g = lambda n: rng.standard_normal((n, DIM)).astype(np.float32)  # noqa: E731
    # Segment 1 (ids base..base+239), then segment 2 and tombstones for segment 1.
    model.add(g(240), ids=np.arange(base, base + 240), meta=_meta(rng, 240, start=base))
    c.flush()
    model.delete([base + i for i in range(3, 240, 20)])
    model.add(g(60), meta=_meta(rng, 60, fields=("tag",)))  # auto ids
    c.flush()
    # Tombstones for both segments (the ones for segment 1 replaced).
    model.delete([base + 5, base + 6, base + 245, base + 250, base + 251])
    c.flush()
    states = [model.snapshot()]

    # The log: every kind of record, touching segment rows and memtable rows.
    seg_ids = sorted(i for i in model.rows if i < base + 240)
    new = base + 1000
    ops = [
        lambda: model.add(g(20), ids=np.arange(new, new + 20), meta=_meta(rng, 20, start=new)),
        lambda: model.add(g(15), meta=_meta(rng, 15, fields=("tag",))),  # auto ids
        lambda: model.delete(seg_ids[:5] + [new + 1, new + 2, new + 3]),
        lambda: model.add(g(10), ids=np.array(seg_ids[10:15] + list(range(new + 50, new + 55))),
                          meta=_meta(rng, 10, fields=("tag", "color")), upsert=True),
        lambda: model.add(g(1)[0]),  # one 1-D vector, no metadata
        lambda: model.delete([seg_ids[10], new + 50, new + 4]),
        lambda: model.add(g(4), ids=np.arange(new + 5, new + 9), upsert=True),
        lambda: model.add(g(30), ids=np.arange(new + 100, new + 130),
                          meta=_meta(rng, 30, fields=("name",), start=new + 100)),
        lambda: model.delete([new + 101]),
        lambda: model.add(g(5), meta=_meta(rng, 5, fields=("tag", "color"))),
    ]
    assert len(ops) == N_LOGGED
    for op in ops:
        op()
        states.append(model.snapshot())
    return states


def _frame_ends(data: bytes) -> list[int]:
    """Offsets 0, end of record 1, end of record 2, ... of a log file's bytes."""
    ends, offset = [0], 0
    while offset < len(data):
        _, length, _, _ = wal.HEADER.unpack_from(data, offset)
        offset += wal.HEADER.size + length
        ends.append(offset)
    assert offset == len(data)
    return ends


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Image:
    work = tmp_path_factory.mktemp("fault-image")
    live, root = work / "live", work / "pristine"
    rng = np.random.default_rng(20240611)
    db = vecstore.open(live)
    try:
        states = {}
        for base, name in zip((0, 100_000), NAMES, strict=True):
            model = Model(db.create_collection(name, dim=DIM, metric="ip", codec="flat"))
            states[name] = _populate(model, rng, base)
        settle_merges(db)
        shutil.copytree(live, root)  # a crash image: the log tails were never flushed
    finally:
        db.close()
    directory = root / "collections" / TARGET
    manifest = json.loads((directory / "manifest.json").read_bytes())["manifest"]
    segments = [s["segment"]["file"] for s in manifest["segments"]]
    tombstones = [s["tombstones"]["file"] for s in manifest["segments"] if s["tombstones"]]
    (log,) = wal.wal_files(directory)
    frames = _frame_ends(log.read_bytes())
    assert len(frames) == N_LOGGED + 1
    assert len(segments) == 2 and len(tombstones) == 2
    return Image(root, states, frames, log.name, segments, tombstones)


# --- helpers ------------------------------------------------------------------------------


def _copy(image: Image, tmp_path: Path) -> Path:
    path = tmp_path / "db"
    shutil.copytree(image.root, path)
    return path


def _open(path: Path):
    """Open ``path``; the database and the RuntimeWarnings raised while opening."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        db = vecstore.open(path)
    return db, [w for w in caught if issubclass(w.category, RuntimeWarning)]


def _brute_force(q: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int):
    scores = q.astype(np.float64) @ vectors.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(scores, order, axis=1)


def check_state(collection, state: State, seed: int = 0) -> None:
    """``collection`` holds exactly ``state``, and searches agree with brute force."""
    assert len(collection) == len(state)
    ids = np.array(sorted(state), dtype=np.int64)
    vectors = np.stack([state[i][0] for i in ids.tolist()])
    np.testing.assert_array_equal(collection.get(ids), vectors)
    got_meta = collection.get_metadata(ids).to_pylist()
    for vid, row in zip(ids.tolist(), got_meta, strict=True):
        assert row.pop("id") == vid
        assert {k: v for k, v in row.items() if v is not None} == state[vid][1], vid

    q = np.random.default_rng(seed).standard_normal((4, DIM)).astype(np.float32)
    k = 10
    res = collection.search(q, k)
    want_ids, want_scores = _brute_force(q, ids, vectors, k)
    np.testing.assert_array_equal(res.ids, want_ids)
    np.testing.assert_allclose(res.distances, want_scores, rtol=1e-5, atol=1e-5)

    # Exhaustive: every live row and nothing else (no resurrected deletes), then padding.
    res = collection.search(q[:1], len(state) + 3)
    assert sorted(res.ids[0, : len(state)].tolist()) == ids.tolist()
    assert (res.ids[0, len(state) :] == -1).all()

    # Filtered on a field every state has: brute force over the matching rows.
    tagged = np.array([state[i][1].get("tag", -1) >= 100 for i in ids.tolist()])
    res = collection.search(q, k, filter={"tag": {">=": 100}})
    want_ids, _ = _brute_force(q, ids[tagged], vectors[tagged], k)
    np.testing.assert_array_equal(res.ids, want_ids)


def check_damaged(db, name: str, file_name: str, image: Image) -> DataLoss:
    """``name`` is listed but raises DataLoss naming ``file_name``; the other collection
    is intact."""
    assert db.list_collections() == sorted(NAMES)
    assert name in db
    assert set(db.damaged) == {name}
    with pytest.raises(DataLoss) as info:
        db.get_collection(name)
    message = str(info.value)
    assert file_name in message
    assert name in message  # the path names the collection's directory
    assert db.damaged[name] is info.value
    for other in NAMES:
        if other != name:
            check_state(db.get_collection(other), image.final(other))
    return info.value


def _target_dir(path: Path) -> Path:
    return path / "collections" / TARGET


def _flip(path: Path, offset: int, mask: int) -> None:
    data = bytearray(path.read_bytes())
    assert mask & 0xFF
    data[offset] ^= mask & 0xFF
    path.write_bytes(bytes(data))


def _zero_tail(path: Path, n: int) -> None:
    data = bytearray(path.read_bytes())
    n = min(n, len(data))
    data[len(data) - n :] = bytes(n)
    path.write_bytes(bytes(data))


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


# --- the pristine image itself ------------------------------------------------------------


def test_pristine_image_recovers_every_logged_write(image, tmp_path):
    path = _copy(image, tmp_path)
    db, caught = _open(path)
    try:
        assert caught == []
        assert db.damaged == {}
        for name in NAMES:
            check_state(db.get_collection(name), image.final(name))
    finally:
        db.close()
    db, caught = _open(path)
    try:
        assert caught == []
        for name in NAMES:
            check_state(db.get_collection(name), image.final(name), seed=1)
    finally:
        db.close()


# --- write-ahead log: truncation --------------------------------------------------------

_WHERE = {  # where in record i to cut: bytes from its start (negative: from its end)
    "start": 0, "magic+1": 1, "length": 5, "crc": 9, "hcrc": 13, "hdr-last": 15,
    "seq": 16, "op": 24, "mid": "mid", "end-1": -1,
}
# Every record boundary; every header field and the payload of the first, a middle and
# the last record; the middle of every other record; and seeded random offsets.
TRUNCATIONS = (
    [(i, "start") for i in range(N_LOGGED + 1)]  # N_LOGGED: the whole file, nothing cut
    + [(i, where) for i in (0, 4, N_LOGGED - 1) for where in _WHERE if where != "start"]
    + [(i, "mid") for i in range(N_LOGGED) if i not in (0, 4, N_LOGGED - 1)]
    + [("random", seed) for seed in range(6)]
)


def _truncation_offset(frames: list[int], spec) -> int:
    if spec[0] == "random":
        return int(np.random.default_rng(spec[1]).integers(0, frames[-1] + 1))
    i, where = spec
    if i == N_LOGGED:
        return frames[-1]
    start, end = frames[i], frames[i + 1]
    at = _WHERE[where]
    if at == "mid":
        return (start + wal.HEADER.size + end) // 2
    return end + at if at < 0 else start + at


@pytest.mark.parametrize("spec", TRUNCATIONS, ids=lambda s: f"{s[0]}-{s[1]}")
def test_wal_truncated_recovers_the_complete_records(image, tmp_path, spec):
    path = _copy(image, tmp_path)
    log = _target_dir(path) / image.wal_name
    cut = _truncation_offset(image.frames, spec)
    _truncate(log, cut)
    complete = sum(1 for end in image.frames[1:] if end <= cut)
    boundary = image.frames[complete]
    expected = dict(image.states[TARGET][complete])

    db, caught = _open(path)
    try:
        # A truncated log never has a valid record after the damage, so it always recovers.
        assert db.damaged == {}, f"cut at {cut}: {db.damaged}"
        if cut == boundary:
            assert caught == [], f"cut at a record boundary ({cut}) is not a torn tail"
        else:
            assert len(caught) == 1 and image.wal_name in str(caught[0].message)
        collection = db.get_collection(TARGET)
        check_state(collection, expected)
        check_state(db.get_collection(OTHER), image.final(OTHER))
        # The torn tail was cut off the file itself (a log holding no record may go).
        if complete:
            assert log.stat().st_size == boundary
        else:
            assert not log.exists() or log.stat().st_size == 0

        # New writes are accepted and logged after the recovered records...
        x = np.random.default_rng(cut).standard_normal((2, DIM)).astype(np.float32)
        collection.add(x, ids=[77_777, 77_778], metadata={"tag": [150, 3]})
        expected[77_777] = (x[0], {"tag": 150})
        expected[77_778] = (x[1], {"tag": 3})
        np.testing.assert_array_equal(collection.get([77_777, 77_778]), x)
        # ...and a crash now leaves a log that replays cleanly, without warnings.
        crashed = tmp_path / "crashed"
        settle_merges(db)
        shutil.copytree(path, crashed)
    finally:
        db.close()
    db, caught = _open(crashed)
    try:
        assert caught == [] and db.damaged == {}
        check_state(db.get_collection(TARGET), expected, seed=2)
        assert len(db.get_collection(OTHER)) == len(image.final(OTHER))
    finally:
        db.close()


def test_wal_removed_entirely_after_a_flush_is_not_an_error(image, tmp_path):
    """With every log file gone, the manifest's state is all there is: it opens.

    Losing a whole log file after the last checkpoint cannot be detected (nothing records
    how many writes followed the manifest); this pins down that it is not a crash."""
    path = _copy(image, tmp_path)
    (_target_dir(path) / image.wal_name).unlink()
    db, caught = _open(path)
    try:
        assert caught == [] and db.damaged == {}
        check_state(db.get_collection(TARGET), image.states[TARGET][0])
    finally:
        db.close()


# --- write-ahead log: damage in the middle and at the end --------------------------------

_FIELDS = {"magic": 0, "length": 4, "crc": 8, "hcrc": 12, "seq": 16, "op": 24}
MIDDLE_FLIPS = (
    [(i, f) for i in (0, 4, N_LOGGED - 2) for f in (*_FIELDS, "payload")]
    + [(i, "payload") for i in range(N_LOGGED - 1) if i not in (0, 4, N_LOGGED - 2)]
    + [("random", seed) for seed in range(6)]
)


def _flip_offset(frames: list[int], spec, last: bool = False) -> tuple[int, int]:
    """(offset, xor mask) of a flip in a record other than the last (or in the last)."""
    rng = np.random.default_rng(zlib.crc32(repr(spec).encode()))
    mask = int(rng.integers(1, 256))
    i, field = spec
    if i == "random":
        i = N_LOGGED - 1 if last else int(rng.integers(0, N_LOGGED - 1))
        field = "payload"
    start, end = frames[i], frames[i + 1]
    if field == "payload":
        return int(rng.integers(start + wal.HEADER.size, end)), mask
    return start + _FIELDS[field] + int(rng.integers(0, 4 if field != "op" else 1)), mask


@pytest.mark.parametrize("spec", MIDDLE_FLIPS, ids=lambda s: f"{s[0]}-{s[1]}")
def test_wal_damage_before_valid_records_is_data_loss(image, tmp_path, spec):
    path = _copy(image, tmp_path)
    offset, mask = _flip_offset(image.frames, spec)
    assert offset < image.frames[-2]  # not in the last record: valid records follow
    _flip(_target_dir(path) / image.wal_name, offset, mask)
    db, _ = _open(path)
    try:
        check_damaged(db, TARGET, image.wal_name, image)
    finally:
        db.close()


@pytest.mark.parametrize("spec", [(N_LOGGED - 1, f) for f in (*_FIELDS, "payload")]
                         + [("random", seed) for seed in range(3)],
                         ids=lambda s: f"{s[0]}-{s[1]}")
def test_wal_damage_in_the_last_record_drops_it_or_is_data_loss(image, tmp_path, spec):
    path = _copy(image, tmp_path)
    offset, mask = _flip_offset(image.frames, spec, last=True)
    assert image.frames[-2] <= offset < image.frames[-1]
    _flip(_target_dir(path) / image.wal_name, offset, mask)
    db, caught = _open(path)
    try:
        if TARGET in db.damaged:
            check_damaged(db, TARGET, image.wal_name, image)
        else:
            assert len(caught) == 1 and image.wal_name in str(caught[0].message)
            check_state(db.get_collection(TARGET), image.states[TARGET][N_LOGGED - 1])
            check_state(db.get_collection(OTHER), image.final(OTHER))
    finally:
        db.close()


@pytest.mark.parametrize("damage", ["zero-range", "garbage-range", "record-removed",
                                    "record-repeated", "records-swapped", "garbage-appended"])
def test_wal_structural_damage(image, tmp_path, damage):
    """Zeroed or garbage blocks mid-log, a missing, repeated or reordered record: DataLoss
    naming the log. Garbage after the last record is a torn tail: dropped with a warning."""
    path = _copy(image, tmp_path)
    log = _target_dir(path) / image.wal_name
    data = bytearray(log.read_bytes())
    f = image.frames
    rng = np.random.default_rng(7)
    if damage == "zero-range":
        data[f[3] + 10 : f[5] + 3] = bytes(f[5] + 3 - f[3] - 10)
    elif damage == "garbage-range":
        data[f[2] : f[2] + 40] = rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
    elif damage == "record-removed":
        del data[f[4] : f[5]]
    elif damage == "record-repeated":
        data[f[6] : f[6]] = data[f[5] : f[6]]
    elif damage == "records-swapped":
        data[f[2] : f[4]] = data[f[3] : f[4]] + data[f[2] : f[3]]
    elif damage == "garbage-appended":
        data += b"VSWL" + rng.integers(0, 256, 100, dtype=np.uint8).tobytes()
    log.write_bytes(bytes(data))
    db, caught = _open(path)
    try:
        if damage == "garbage-appended":
            assert len(caught) == 1 and db.damaged == {}
            check_state(db.get_collection(TARGET), image.final(TARGET))
        else:
            check_damaged(db, TARGET, image.wal_name, image)
    finally:
        db.close()


# --- segment and tombstone files --------------------------------------------------------

FILE_DAMAGES = (
    [("flip", seed) for seed in range(4)]
    + [("flip-head", 0), ("flip-tail", 0)]
    + [("zero-tail", n) for n in (1, 64, 10**9)]
    + [("truncate", n) for n in (0, "half", "minus-1")]
    + [("append", 1), ("missing", 0)]
)


def _damage_file(path: Path, damage) -> None:
    kind, arg = damage
    size = path.stat().st_size
    rng = np.random.default_rng(arg if isinstance(arg, int) else 0)
    mask = int(rng.integers(1, 256))
    if kind == "flip":
        for offset in rng.choice(size, size=1 + arg % 3, replace=False):
            _flip(path, int(offset), mask)
    elif kind == "flip-head":
        _flip(path, 0, mask)
    elif kind == "flip-tail":
        _flip(path, size - 1, mask)
    elif kind == "zero-tail":
        _zero_tail(path, arg)
    elif kind == "truncate":
        _truncate(path, {"half": size // 2, "minus-1": size - 1}.get(arg, arg))
    elif kind == "append":
        with open(path, "ab") as f:
            f.write(b"\0")
    elif kind == "missing":
        path.unlink()


@pytest.mark.parametrize("which", ["seg-0", "seg-1", "del-0", "del-1"])
@pytest.mark.parametrize("damage", FILE_DAMAGES, ids=lambda d: f"{d[0]}-{d[1]}")
def test_damaged_segment_or_tombstones_is_data_loss_naming_the_file(image, tmp_path, which,
                                                                     damage):
    kind, index = which.split("-")
    name = (image.segments if kind == "seg" else image.tombstones)[int(index)]
    path = _copy(image, tmp_path)
    _damage_file(_target_dir(path) / name, damage)
    db, _ = _open(path)
    try:
        check_damaged(db, TARGET, name, image)
    finally:
        db.close()


@pytest.mark.parametrize("which", ["seg-0", "del-1"])
@pytest.mark.parametrize("damage", ["footer-magic", "half", "zeros", "swapped"])
def test_damage_behind_a_matching_checksum_is_still_data_loss(image, tmp_path, which, damage):
    """The manifest's size and CRC32C made to match the damaged file (as if it had been
    written damaged): Arrow validation and the content checks still refuse it."""
    kind, index = which.split("-")
    files = image.segments if kind == "seg" else image.tombstones
    name = files[int(index)]
    path = _copy(image, tmp_path)
    directory = _target_dir(path)
    target = directory / name
    data = bytearray(target.read_bytes())
    if damage == "footer-magic":
        data[-1] ^= 0x01
    elif damage == "half":
        del data[len(data) // 2 :]
    elif damage == "zeros":
        data = bytearray(len(data))
    elif damage == "swapped":  # the file of another kind (a segment <-> tombstones)
        other = (image.tombstones if kind == "seg" else image.segments)[0]
        data = bytearray((directory / other).read_bytes())
    target.write_bytes(bytes(data))
    _rewrite_manifest(directory, lambda body: _fix_entry(body, name, target))
    db, _ = _open(path)
    try:
        check_damaged(db, TARGET, name, image)
    finally:
        db.close()


def _fix_entry(body: dict, name: str, path: Path) -> None:
    for record in body["segments"]:
        for entry in (record["segment"], record["tombstones"]):
            if entry and entry["file"] == name:
                entry["bytes"] = path.stat().st_size
                entry["crc32c"] = file_crc32c(path)


def _rewrite_manifest(directory: Path, change) -> None:
    """Apply ``change`` to the manifest body and re-seal it with a valid checksum."""
    path = directory / "manifest.json"
    body = json.loads(path.read_bytes())["manifest"]
    change(body)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(json.dumps({"crc32c": crc32c(canonical), "manifest": body}).encode())


# --- the manifest -------------------------------------------------------------------------

MANIFEST_DAMAGES = (
    [("flip", seed) for seed in range(16)]
    + [("zero-tail", n) for n in (1, 40, 10**9)]
    + [("truncate", n) for n in (0, "half", "minus-1")]
    + [("replace", b"{}"), ("replace", b"[]"), ("replace", b"null"), ("replace", b""),
       ("replace", b"\xff\xfe garbage"), ("replace", b'{"crc32c": 0, "manifest": {}}')]
)


@pytest.mark.parametrize("damage", MANIFEST_DAMAGES, ids=lambda d: f"{d[0]}-{d[1]!r}")
def test_damaged_manifest_is_data_loss_naming_it(image, tmp_path, damage):
    path = _copy(image, tmp_path)
    manifest = _target_dir(path) / "manifest.json"
    original = manifest.read_bytes()
    kind, arg = damage
    if kind == "flip":
        rng = np.random.default_rng(arg)
        _flip(manifest, int(rng.integers(0, len(original))), int(rng.integers(1, 256)))
    elif kind == "zero-tail":
        _zero_tail(manifest, arg)
    elif kind == "truncate":
        _truncate(manifest, {"half": len(original) // 2, "minus-1": len(original) - 1}
                  .get(arg, arg))
    else:
        manifest.write_bytes(arg)
    db, _ = _open(path)
    try:
        if TARGET not in db.damaged and _same_json(manifest.read_bytes(), original):
            # A flip that only turned one JSON whitespace byte into another: same content.
            check_state(db.get_collection(TARGET), image.final(TARGET))
        else:
            check_damaged(db, TARGET, "manifest.json", image)
    finally:
        db.close()


def _same_json(a: bytes, b: bytes) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


@pytest.mark.parametrize("change", ["unknown-codec", "no-config", "bad-row-count",
                                    "bad-schema", "segment-missing-file", "format-version"])
def test_manifest_with_valid_checksum_but_bad_content_is_data_loss(image, tmp_path, change):
    """A manifest whose checksum matches but whose content cannot be used (as written by
    a newer version, or damaged before it was sealed) is DataLoss for that collection
    only: the database and the other collection still open."""

    def edit(body):
        if change == "unknown-codec":
            body["config"]["codec"] = {"codec": "from-the-future", "dim": DIM}
        elif change == "no-config":
            del body["config"]
        elif change == "bad-row-count":
            body["segments"][0]["segment"]["rows"] = "many"
        elif change == "bad-schema":
            body["metadata_schema"] = "bm90IGFuIGFycm93IHNjaGVtYQ=="
        elif change == "segment-missing-file":
            del body["segments"][0]["segment"]["file"]
        elif change == "format-version":
            body["format_version"] = 99

    path = _copy(image, tmp_path)
    _rewrite_manifest(_target_dir(path), edit)
    db, _ = _open(path)
    try:
        check_damaged(db, TARGET, "manifest.json", image)
    finally:
        db.close()


def test_deleted_manifest_is_data_loss_naming_it(image, tmp_path):
    """A collection directory without its manifest is damage, not absence.

    Collections are created in a ``.creating-*`` directory that already holds the
    manifest and renamed into place; the manifest is only ever replaced atomically; drops
    rename the directory away first. So a non-hidden directory under ``collections/``
    always had a manifest: if it is gone, the segments and log beside it hold data that
    must not silently disappear. The collection is listed as damaged with DataLoss naming
    manifest.json, and its name cannot be reused by accident.
    """
    path = _copy(image, tmp_path)
    (_target_dir(path) / "manifest.json").unlink()
    db, _ = _open(path)
    try:
        check_damaged(db, TARGET, "manifest.json", image)
    finally:
        db.close()


def test_collection_directory_without_manifest_does_not_break_create(image, tmp_path):
    """Whatever opening makes of a manifest-less directory, creating a collection under
    its name raises a vecstore error (AlreadyExists, or DataLoss), never a raw OSError,
    and leaves no staging directory behind."""
    path = _copy(image, tmp_path)
    (_target_dir(path) / "manifest.json").unlink()
    db, _ = _open(path)
    try:
        with pytest.raises(vecstore.VecstoreError):
            db.create_collection(TARGET, dim=DIM, metric="ip", codec="flat")
        assert sorted(os.listdir(path / "collections")) == sorted(NAMES)
    finally:
        db.close()


def test_dropping_a_damaged_collection_frees_its_name(image, tmp_path):
    path = _copy(image, tmp_path)
    _flip(_target_dir(path) / image.segments[0], 100, 0x40)
    db, _ = _open(path)
    try:
        check_damaged(db, TARGET, image.segments[0], image)
        db.drop_collection(TARGET)
        assert db.list_collections() == [OTHER] and db.damaged == {}
        with pytest.raises(NotFound):
            db.get_collection(TARGET)
        fresh = db.create_collection(TARGET, dim=DIM, metric="ip", codec="flat")
        assert len(fresh) == 0
    finally:
        db.close()
    assert sorted(os.listdir(path / "collections")) == sorted(NAMES)


def test_every_file_of_one_collection_damaged_leaves_the_other_intact(image, tmp_path):
    path = _copy(image, tmp_path)
    for file in _target_dir(path).iterdir():
        _zero_tail(file, 16)
    db, _ = _open(path)
    try:
        assert db.list_collections() == sorted(NAMES)
        with pytest.raises(DataLoss):
            db.get_collection(TARGET)
        check_state(db.get_collection(OTHER), image.final(OTHER))
    finally:
        db.close()
