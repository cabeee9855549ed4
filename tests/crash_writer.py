"""The writer process of ``tests/test_crash.py``: writes until it is killed.

Usage::

    python tests/crash_writer.py DIR SEED STATE_JSON DURABILITY

It imports vecstore, prints ``{"ready": true}`` and waits for one line on stdin, so that
the test can start it ahead of time and only let it open the database once the test has
closed it. It then reads STATE_JSON (written by the test: the ids present and their
versions, ids deleted before, the largest id ever used and the next version number),
opens the database at DIR with the given durability, opens (or creates) the collection
``crash`` (codec ``flat``, metric ``ip``, ``DIM`` dimensions, tiny segments so that
flushes are frequent), prints ``{"opened": <rows>}`` and loops forever over a random mix,
drawn from SEED, of

* ``add`` of fresh ids (sometimes re-adding deleted ones), explicit or auto-assigned;
* ``upsert`` of present ids, deleted ids and fresh ids, with new vectors;
* ``delete`` of present ids (and an absent one now and then);
* explicit ``flush()`` and ``compact()``;

and, on a second collection ``trained`` (codec ``pq2x8``, which learns from data, with
the float32 vectors stored so that ``get`` returns them exactly), of its life cycle:

* ``create`` while it is absent;
* ``train`` on the seeded sample ``training_sample(s)`` while it is new and empty;
* ``add`` of fresh ids and ``delete`` of present ones once it is trained;
* ``drop`` (``Database.drop_collection``), trained or not, empty or not.

The vector of id ``i`` written at version ``v`` is ``vector(i, v)``, so the test
regenerates every row exactly. Before each operation it prints
``{"intent": {...}}`` and after it returns ``{...}`` (the acknowledgement, the same
operation with the ids actually written, for delete the count removed, for train the
digest of the trained codec's config); operations on ``trained`` name it in
``"collection"``. For flush and compact the two lines are ``{"begin": "flush"}`` and
``{"end": "flush"}``. Each line is flushed at once, so every acknowledged write is on the
test's pipe before the next operation starts.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

import numpy as np

import vecstore

DIM = 16
COLLECTION = "crash"
TRAINED = "trained"
TRAINED_CODEC = "pq2x8"  # 256 centroids in each of two 8-d halves: k-means to train
CODEC_SEED = 7
TRAIN_ROWS = 2048
# The trained collection stays small: past this size its deletes dominate.
TRAINED_ROWS = 200
# 64-byte flat codes + 12 bytes of id and norm: about 100 rows a segment, so adds
# trigger automatic flushes and compaction has many small segments to merge.
SEGMENT_BYTES = 8192
# A large collection makes each cycle slower; past this size deletes dominate.
TARGET_ROWS = 1500
# Safety net should the test die without killing us.
MAX_SECONDS = 120.0

# Operation weights: flush about every 4 operations, compact about every 9. The trained
# collection's operations (each only in the states that allow it) take about one step in
# seven, and a life cycle, creation to drop, lasts about 50 steps.
WEIGHTS = {"add": 0.22, "add_auto": 0.08, "upsert": 0.16, "delete": 0.19,
           "flush": 0.24, "compact": 0.11,
           "create": 0.10, "train": 0.10, "drop": 0.04, "add_trained": 0.10,
           "delete_trained": 0.04}
TRAINED_OPS = ("create", "train", "drop", "add_trained", "delete_trained")


def vector(id_: int, version: int) -> np.ndarray:
    """The (DIM,) float32 vector of ``id_`` at ``version``: the same in every process."""
    return np.random.default_rng([int(version), int(id_)]).standard_normal(DIM, dtype=np.float32)


def vectors(ids, version: int) -> np.ndarray:
    """(n, DIM) float32 rows ``vector(i, version)`` for ``ids``."""
    out = np.empty((len(ids), DIM), dtype=np.float32)
    for row, id_ in enumerate(ids):
        out[row] = vector(id_, version)
    return out


def training_sample(seed: int) -> np.ndarray:
    """The (TRAIN_ROWS, DIM) float32 sample the trained collection is trained on."""
    rng = np.random.default_rng([int(seed), TRAIN_ROWS])
    return rng.standard_normal((TRAIN_ROWS, DIM), dtype=np.float32)


def codec_digest(config: dict) -> str:
    """A short digest of a codec's ``to_config()``, equal for equal configs."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def emit(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Writer:
    def __init__(self, db, collection, state: dict, rng: np.random.Generator):
        self.db = db
        self.c = collection
        self.rng = rng
        self.present = {int(k): int(v) for k, v in state["present"].items()}
        self.dead = [int(i) for i in state["dead"]]
        self.max_used = int(state["max_used"])
        self.version = int(state["next_version"])
        self.t = db.get_collection(TRAINED) if TRAINED in db else None
        self.t_present = {int(k): int(v) for k, v in state["trained"]["present"].items()}
        self.t_max_used = int(state["trained"]["max_used"])

    def fresh(self, n: int) -> list[int]:
        return list(range(self.max_used + 1, self.max_used + 1 + n))

    def take_dead(self, most: int) -> list[int]:
        """Up to ``most`` ids deleted earlier (no longer present)."""
        if not self.dead or most <= 0:
            return []
        n = int(self.rng.integers(0, min(most, len(self.dead)) + 1))
        picked = self.rng.choice(len(self.dead), size=n, replace=False)
        return [self.dead[i] for i in sorted(picked)]

    def sample_present(self, most: int) -> list[int]:
        if not self.present:
            return []
        keys = list(self.present)
        n = int(self.rng.integers(1, min(most, len(keys)) + 1))
        return [keys[i] for i in self.rng.choice(len(keys), size=n, replace=False)]

    def wrote(self, ids, version: int) -> None:
        for id_ in ids:
            self.present[id_] = version
        dead = set(ids)
        self.dead = [i for i in self.dead if i not in dead]
        self.max_used = max(self.max_used, *ids)

    def step(self) -> None:
        weights = dict(WEIGHTS)
        if not self.present:
            weights["upsert"] = weights["delete"] = 0.0
        elif len(self.present) > TARGET_ROWS:
            weights["delete"] *= 4
        weights.update(self.trained_weights())
        names = list(weights)
        p = np.array([weights[n] for n in names])
        op = names[self.rng.choice(len(names), p=p / p.sum())]
        getattr(self, "op_" + op)()

    def trained_weights(self) -> dict[str, float]:
        """The trained collection's operation weights, zero where its state rules one out."""
        allowed = ["create"]
        if self.t is not None:
            allowed = ["drop", "add_trained"] if self.t.codec.is_trained else ["drop", "train"]
        weights = {op: WEIGHTS[op] if op in allowed else 0.0 for op in TRAINED_OPS}
        if self.t_present:
            scale = 4 if len(self.t_present) > TRAINED_ROWS else 1
            weights["delete_trained"] = WEIGHTS["delete_trained"] * scale
        return weights

    def op_add(self) -> None:
        ids = self.fresh(int(self.rng.integers(1, 41)))
        if self.rng.random() < 0.3:
            ids += self.take_dead(3)
        ids = [int(i) for i in self.rng.permutation(ids)]
        version = self.version
        self.version += 1
        emit({"intent": {"op": "add", "ids": ids, "version": version}})
        got = self.c.add(vectors(ids, version), ids=np.array(ids, dtype=np.int64))
        self.wrote(ids, version)
        emit({"op": "add", "ids": [int(i) for i in got], "version": version})

    def op_add_auto(self) -> None:
        # Without ids the collection continues from the largest id ever used: predict them.
        ids = self.fresh(int(self.rng.integers(1, 21)))
        version = self.version
        self.version += 1
        emit({"intent": {"op": "add", "ids": ids, "version": version, "auto": True}})
        got = [int(i) for i in self.c.add(vectors(ids, version))]
        self.wrote(got, version)
        emit({"op": "add", "ids": got, "version": version, "auto": True})

    def op_upsert(self) -> None:
        ids = self.sample_present(15) + self.take_dead(2)
        ids += self.fresh(int(self.rng.integers(0, 4)))
        ids = [int(i) for i in self.rng.permutation(ids)]
        version = self.version
        self.version += 1
        emit({"intent": {"op": "upsert", "ids": ids, "version": version}})
        got = self.c.upsert(vectors(ids, version), ids=np.array(ids, dtype=np.int64))
        self.wrote(ids, version)
        emit({"op": "upsert", "ids": [int(i) for i in got], "version": version})

    def op_delete(self) -> None:
        most = 40 if len(self.present) <= TARGET_ROWS else 200
        ids = self.sample_present(most)
        if self.rng.random() < 0.2:
            ids += self.take_dead(1)  # absent: ignored
        ids = [int(i) for i in ids]
        emit({"intent": {"op": "delete", "ids": ids}})
        count = self.c.delete(np.array(ids, dtype=np.int64))
        for id_ in ids:
            if self.present.pop(id_, None) is not None:
                self.dead.append(id_)
        emit({"op": "delete", "ids": ids, "count": int(count)})

    def op_flush(self) -> None:
        emit({"begin": "flush"})
        self.c.flush()
        emit({"end": "flush"})

    def op_compact(self) -> None:
        emit({"begin": "compact"})
        self.c.compact()
        emit({"end": "compact"})

    def op_create(self) -> None:
        emit({"intent": {"op": "create", "collection": TRAINED}})
        self.t = self.db.create_collection(TRAINED, dim=DIM, metric="ip", codec=TRAINED_CODEC,
                                           seed=CODEC_SEED, store_vectors="float32")
        emit({"op": "create", "collection": TRAINED})

    def op_train(self) -> None:
        sample = int(self.rng.integers(0, 1 << 31))
        emit({"intent": {"op": "train", "collection": TRAINED, "sample": sample}})
        self.t.train(training_sample(sample))
        emit({"op": "train", "collection": TRAINED, "sample": sample,
              "codec": codec_digest(self.t.config()["codec"])})

    def op_drop(self) -> None:
        emit({"intent": {"op": "drop", "collection": TRAINED}})
        self.db.drop_collection(TRAINED)
        self.t = None
        self.t_present = {}
        emit({"op": "drop", "collection": TRAINED})

    def op_add_trained(self) -> None:
        ids = list(range(self.t_max_used + 1, self.t_max_used + 1 + int(self.rng.integers(1, 31))))
        version = self.version
        self.version += 1
        emit({"intent": {"op": "add", "collection": TRAINED, "ids": ids, "version": version}})
        got = self.t.add(vectors(ids, version), ids=np.array(ids, dtype=np.int64))
        self.t_present.update(dict.fromkeys(ids, version))
        self.t_max_used = ids[-1]
        emit({"op": "add", "collection": TRAINED, "ids": [int(i) for i in got],
              "version": version})

    def op_delete_trained(self) -> None:
        keys = list(self.t_present)
        most = 20 if len(keys) <= TRAINED_ROWS else 60
        n = int(self.rng.integers(1, min(most, len(keys)) + 1))
        ids = [keys[i] for i in sorted(self.rng.choice(len(keys), size=n, replace=False))]
        if self.rng.random() < 0.2:
            ids.append(self.t_max_used + 1)  # absent: ignored
        emit({"intent": {"op": "delete", "collection": TRAINED, "ids": ids}})
        count = self.t.delete(np.array(ids, dtype=np.int64))
        for id_ in ids:
            self.t_present.pop(id_, None)
        emit({"op": "delete", "collection": TRAINED, "ids": ids, "count": int(count)})


def main(argv: list[str]) -> int:
    directory, seed, state_path, durability = argv[1], int(argv[2]), argv[3], argv[4]
    emit({"ready": True})
    if not sys.stdin.readline():
        return 0  # the test went away before starting us
    with open(state_path) as f:
        state = json.load(f)
    db = vecstore.open(directory, durability=durability, segment_bytes=SEGMENT_BYTES)
    if COLLECTION in db:
        collection = db.get_collection(COLLECTION)
    else:
        collection = db.create_collection(COLLECTION, dim=DIM, metric="ip", codec="flat")
    emit({"opened": len(collection)})
    writer = Writer(db, collection, state, np.random.default_rng(seed))
    deadline = time.monotonic() + MAX_SECONDS
    while time.monotonic() < deadline:
        writer.step()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
