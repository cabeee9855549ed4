"""Crash recovery: a writer process killed with SIGKILL loses no acknowledged write.

Each cycle starts ``tests/crash_writer.py`` on the same database directory, lets it write
(adds, upserts, deletes, flushes, compactions in collection ``crash``; creation, training,
adds, deletes and drops of collection ``trained``; it prints an intent line before each
operation and an acknowledgement after it), kills it with SIGKILL at a random moment,
then reopens the database in this process and checks it against a model built from the
acknowledgements:

* the ids present are exactly the model's (no phantom, no duplicate, deleted ids absent),
  each with exactly the vector the model says (codec ``flat`` stores float32 exactly,
  ``trained`` keeps its float32 vectors);
* ``trained`` exists exactly when the model says (an acknowledged drop is final), and its
  codec's config is the untrained one or, once a training was acknowledged, the one that
  training ``pq2x8`` on the same sample gives in this process;
* the one operation in flight at the kill (intent printed, no acknowledgement) is
  all-or-nothing: the database equals the model without it or with it, nothing between;
* ids auto-assigned by ``add`` continue from the largest id ever used;
* search results equal a brute-force float32 scan of the model (distances to 1e-5,
  ids wherever the distances are distinct); in ``trained`` after reranking every row.

Kills are timed four ways: a random 20-150 ms after the writer's first acknowledgement,
a few milliseconds after it announces a flush or compaction, a few milliseconds after it
announces a creation, training or drop, and right after it is told to open the database
(so some land during recovery itself). Background merges run in the writer all along, so
kills land in them too. The test asserts that some kills landed inside flush or compact
and some inside train or drop; the kills inside each kind of operation, the operations in
flight that were applied or lost, and the kills that left a temporary manifest or
unreferenced files behind (a checkpoint or manifest swap cut short), are printed
(``pytest -s``). Half the cycles check a copy of the directory, so that the next
writer itself recovers the database as the kill left it (replays the log) and writes on.

``test_sigkill_while_creating_the_database`` kills a process stalled inside the creation
of a new database, a window too narrow for random kills.

Environment:

``VECSTORE_CRASH_CYCLES``
    Kill cycles of the ``sync`` test (default 50, about 30-60 s on two cores); the
    ``batch`` test runs a fifth of that, at least 10. Set it to 1000 or more for a long
    manual run.
``VECSTORE_CRASH_SEED``
    Base seed of the writers' operations and of the kill timing (default: random; it is
    printed and named in every failure message).
"""

from __future__ import annotations

import collections
import functools
import importlib.util
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest

import vecstore
from vecstore import NotFound, make_codec
from vecstore._validate import MAX_RESCORE

REPO = Path(__file__).resolve().parent.parent
WRITER_SCRIPT = Path(__file__).resolve().parent / "crash_writer.py"

_spec = importlib.util.spec_from_file_location("crash_writer", WRITER_SCRIPT)
crash_writer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(crash_writer)

CYCLES = int(os.environ.get("VECSTORE_CRASH_CYCLES", "50"))
BASE_SEED = int(os.environ.get("VECSTORE_CRASH_SEED", str(np.random.SeedSequence().entropy
                                                          % (1 << 31))))
LOOKAHEAD = 2  # writers started ahead of their cycle
STARTUP_TIMEOUT = 60.0  # seconds for a writer to import vecstore and acknowledge a write
TRAINED = crash_writer.TRAINED
# The operations of the trained collection's life cycle a "lifecycle" kill aims at, how
# often, and how long after the writer announces one the kill may come: training is
# k-means on 2,048 rows plus a manifest swap (25-35 ms on an idle core, more while other
# writers start), a drop or a creation a few renames and fsyncs (about 1 ms; a kill as
# soon as the test reads the announcement lands before the rename, 1 ms later mostly
# after it).
LIFECYCLE_TARGETS = {"train": 0.4, "drop": 0.45, "create": 0.15}
LIFECYCLE_KILL_DELAY = {"train": 0.04, "drop": 0.0015, "create": 0.0015}


# --- the writer process -------------------------------------------------------------------


class WriterProcess:
    """One ``crash_writer.py`` process and the lines it printed, read by a thread."""

    def __init__(self, directory: Path, seed: int, state_path: Path, durability: str,
                 stderr_path: Path):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        # One BLAS thread: the machine's cores are shared with the test process.
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        env.setdefault("OMP_NUM_THREADS", "1")
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115 (closed in finish())
        self.proc = subprocess.Popen(
            [sys.executable, str(WRITER_SCRIPT), str(directory), str(seed), str(state_path),
             durability],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.lines: list[str] = []  # complete lines only
        self.partial = b""  # an unterminated last line (cut by the kill)
        self._events: queue.Queue[dict | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            line = out.readline()
            if not line:
                break
            if not line.endswith(b"\n"):
                self.partial = line
                break
            text = line.decode()
            self.lines.append(text)
            self._events.put(json.loads(text))
        self._events.put(None)

    def wait_for(self, predicate, timeout: float) -> dict | None:
        """The first line from now on satisfying ``predicate``; None on EOF or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                event = self._events.get(timeout=left)
            except queue.Empty:
                return None
            if event is None:
                self._events.put(None)  # keep EOF visible to later waits
                return None
            if predicate(event):
                return event

    def go(self) -> None:
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def kill(self) -> int:
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.finish()

    def finish(self) -> int:
        rc = self.proc.wait()
        self._reader.join(timeout=30)
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        self._stderr.close()
        return rc

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]


# --- the model ----------------------------------------------------------------------------


def untrained_codec():
    return make_codec(crash_writer.TRAINED_CODEC, dim=crash_writer.DIM,
                      seed=crash_writer.CODEC_SEED)


UNTRAINED = crash_writer.codec_digest(untrained_codec().to_config())


@functools.cache
def trained_digest(sample: int) -> str:
    """The digest of the trained collection's codec config once trained on ``sample``."""
    codec = untrained_codec()
    codec.train(crash_writer.training_sample(sample))
    return crash_writer.codec_digest(codec.to_config())


def on_trained(op: dict | None) -> bool:
    return op is not None and op.get("collection") == TRAINED


def kind(op: dict) -> str:
    """The operation's name in the summary: ``add`` ... ``drop``, ``add trained``."""
    if on_trained(op) and op["op"] in ("add", "delete"):
        return f"{op['op']} trained"
    return op["op"]


@dataclass(frozen=True)
class TrainedModel:
    """What collection ``trained`` must be: absent (``codec`` None), or present with the
    digest of its codec's config and id -> version of its rows."""

    codec: str | None = None
    present: dict[int, int] = field(default_factory=dict)
    max_used: int = -1

    def applied(self, op: dict) -> TrainedModel:
        """The collection after ``op`` (create, train, add, delete or drop)."""
        if op["op"] == "create":
            return replace(self, codec=UNTRAINED, present={})
        if op["op"] == "drop":
            return replace(self, codec=None, present={})
        if op["op"] == "train":
            return replace(self, codec=trained_digest(op["sample"]))
        present = dict(self.present)
        if op["op"] == "delete":
            for id_ in op["ids"]:
                present.pop(id_, None)
            return replace(self, present=present)
        present.update(dict.fromkeys(op["ids"], op["version"]))
        return replace(self, present=present, max_used=max(self.max_used, *op["ids"]))

    def state(self) -> dict:
        return {"present": {str(k): v for k, v in self.present.items()},
                "max_used": self.max_used}


class Model:
    """What the database must hold: id -> version of its vector, and the history."""

    def __init__(self):
        self.present: dict[int, int] = {}
        self.dead: set[int] = set()  # ids deleted and not present now
        self.max_used = -1
        self.next_version = 1
        self.trained = TrainedModel()
        self._vectors: dict[tuple[int, int], np.ndarray] = {}

    def vector(self, id_: int, version: int) -> np.ndarray:
        key = (id_, version)
        if key not in self._vectors:
            self._vectors[key] = crash_writer.vector(id_, version)
        return self._vectors[key]

    def applied(self, op: dict) -> dict[int, int]:
        """``present`` after ``op`` (add, upsert or delete)."""
        present = dict(self.present)
        if op["op"] == "delete":
            for id_ in op["ids"]:
                present.pop(id_, None)
        else:
            for id_ in op["ids"]:
                present[id_] = op["version"]
        return present

    def apply(self, op: dict) -> None:
        self.next_version = max(self.next_version, op.get("version", 0) + 1)
        if on_trained(op):
            self.trained = self.trained.applied(op)
            return
        after = self.applied(op)
        if op["op"] == "delete":
            self.dead |= set(self.present) - set(after)
        else:
            self.dead -= set(op["ids"])
            self.max_used = max(self.max_used, *op["ids"])
        self.present = after

    def state(self, rng: np.random.Generator) -> dict:
        """The writer's starting state (a sample of the deleted ids)."""
        dead = sorted(self.dead)
        if len(dead) > 300:
            dead = sorted(int(i) for i in rng.choice(dead, size=300, replace=False))
        return {"present": {str(k): v for k, v in self.present.items()}, "dead": dead,
                "max_used": self.max_used, "next_version": self.next_version,
                "trained": self.trained.state()}

    def matrix(self, present: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array(sorted(present), dtype=np.int64)
        x = np.empty((ids.size, crash_writer.DIM), dtype=np.float32)
        for row, id_ in enumerate(ids):
            x[row] = self.vector(int(id_), present[int(id_)])
        return ids, x


# --- one cycle ----------------------------------------------------------------------------


@dataclass
class Summary:
    cycles: int = 0
    kill_modes: dict[str, int] = field(default_factory=dict)
    # open, idle, flush, compact, or the kind() of the operation in flight
    killed_in: dict[str, int] = field(default_factory=dict)
    in_flight_applied: dict[str, int] = field(default_factory=dict)  # by kind()
    in_flight_lost: dict[str, int] = field(default_factory=dict)
    torn_tails: int = 0
    tmp_manifest: int = 0
    unreferenced_files: int = 0
    acknowledged_ops: int = 0
    max_rows: int = 0
    rows_checked: int = 0
    checked_on_copy: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # starting, writing, checking

    def clock(self, phase: str, since: float) -> float:
        now = time.monotonic()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - since
        return now

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


class CycleFailure(AssertionError):
    pass


def replay_output(lines: list[str], model: Model, where: str) -> tuple[dict | None, str]:
    """Apply the acknowledged operations to ``model``; return the one in flight at the
    kill (an intent without acknowledgement, else None) and where the kill landed."""
    pending = None
    phase = "open"
    for text in lines:
        event = json.loads(text)
        if "ready" in event:
            continue
        if "opened" in event:
            phase = "idle"
        elif "intent" in event:
            assert pending is None, f"{where}: intent {event} while {pending} is in flight"
            pending = event["intent"]
            phase = kind(pending)
        elif "begin" in event:
            assert pending is None, f"{where}: {event} while {pending} is in flight"
            phase = event["begin"]
        elif "end" in event:
            assert phase == event["end"], f"{where}: {event} without a begin"
            phase = "idle"
        else:
            assert pending is not None and kind(event) == kind(pending), \
                f"{where}: acknowledgement {event} for intent {pending}"
            check_acknowledgement(event, pending, model, where)
            model.apply(event)
            pending = None
            phase = "idle"
    return pending, phase


def check_acknowledgement(event: dict, pending: dict, model: Model, where: str) -> None:
    """The writer's acknowledgement agrees with the model before it is applied."""
    if event["op"] == "delete":
        present = model.trained.present if on_trained(event) else model.present
        expected = len(set(event["ids"]) & set(present))
        assert event["count"] == expected, \
            f"{where}: {kind(event)} of {event['ids']} removed {event['count']}, " \
            f"{expected} were present"
    elif event["op"] == "train":
        assert event["codec"] == trained_digest(event["sample"]), \
            f"{where}: trained on sample {event['sample']}, the codec's config is not the " \
            "one training it here gives"
    elif event["op"] in ("add", "upsert"):
        assert event["ids"] == pending["ids"], (
            f"{where}: {kind(event)} acknowledged ids {event['ids']}, expected "
            f"{pending['ids']} (auto ids continue from the largest id ever used)")


def read_database(c, where: str) -> dict[int, np.ndarray]:
    """Every live row of collection ``c`` (id -> vector), found by a search for all rows,
    which also shows duplicates and phantoms the id index might hide."""
    n = len(c)
    assert c.stats()["rows"] == n, f"{where}: stats()['rows'] != len()"
    if not c.codec.is_trained:  # an untrained codec cannot score a query
        assert n == 0, f"{where}: {n} rows in {c.name!r}, whose codec is untrained"
        return {}
    q = np.ones((1, crash_writer.DIM), dtype=np.float32)
    found = c.search(q, k=n + 3).ids[0]
    assert (found[n:] == -1).all(), f"{where}: search returns more than len(c)={n} rows"
    ids = found[:n]
    assert (ids >= 0).all(), f"{where}: search finds fewer rows than len(c)={n}"
    assert np.unique(ids).size == n, f"{where}: duplicate ids {_duplicates(ids)}"
    if n == 0:
        return {}
    x = c.get(ids)
    return {int(i): x[row] for row, i in enumerate(ids)}


def _duplicates(ids: np.ndarray) -> list[int]:
    values, counts = np.unique(ids, return_counts=True)
    return values[counts > 1][:10].tolist()


def mismatch(found: dict[int, np.ndarray], model: Model, present: dict[int, int]) -> str:
    """'' when ``found`` holds exactly ``present``'s rows, else what differs."""
    phantom = sorted(set(found) - set(present))
    missing = sorted(set(present) - set(found))
    wrong = sorted(i for i in set(found) & set(present)
                   if not np.array_equal(found[i], model.vector(i, present[i])))
    if not (phantom or missing or wrong):
        return ""
    return (f"{len(phantom)} phantom ids {phantom[:10]}, {len(missing)} missing ids "
            f"{missing[:10]}, {len(wrong)} ids with the wrong vector {wrong[:10]}")


def check_search(c, ids: np.ndarray, x: np.ndarray, rng: np.random.Generator, where: str,
                 *, rerank_all: bool = False) -> None:
    """Search results equal a brute-force float32 scan over rows ``x`` with ``ids``; with
    ``rerank_all``, a search that reranks every row by its stored vector."""
    k, rescore = 10, None
    if rerank_all:
        k = max(k, -(-ids.size // MAX_RESCORE))
        rescore = max(1, -(-ids.size // k))
    queries = rng.standard_normal((6, crash_writer.DIM)).astype(np.float32)
    result = c.search(queries, k=k, rescore=rescore)
    scores = queries @ x.T  # (nq, n) float32
    kept = min(k, ids.size)
    assert (result.ids[:, kept:] == -1).all(), f"{where}: padding is not -1"
    assert np.isneginf(result.distances[:, kept:]).all(), f"{where}: padding is not -inf"
    if not kept:
        return
    position = {int(i): p for p, i in enumerate(ids)}
    for row in range(queries.shape[0]):
        order = np.lexsort((ids, -scores[row]))
        best = scores[row, order[: kept + 1]]
        got_ids, got = result.ids[row, :kept], result.distances[row, :kept]
        np.testing.assert_allclose(got, best[:kept], rtol=1e-5, atol=1e-5,
                                   err_msg=f"{where}: query {row} distances")
        assert all(int(i) in position for i in got_ids), \
            f"{where}: query {row} returns ids not in the model: {got_ids}"
        true = scores[row, [position[int(i)] for i in got_ids]]
        np.testing.assert_allclose(got, true, rtol=1e-5, atol=1e-5,
                                   err_msg=f"{where}: query {row} distances of its ids")
        # Where a score stands apart from its neighbours, the id must be the model's.
        tol = 1e-4 * max(1.0, float(np.abs(best).max()))
        for j in range(kept):
            above = j == 0 or best[j - 1] - best[j] > tol
            below = j + 1 >= best.size or best[j] - best[j + 1] > tol
            if above and below:
                assert got_ids[j] == ids[order[j]], \
                    f"{where}: query {row} rank {j}: id {got_ids[j]}, expected {ids[order[j]]}"


def inspect_files(directory: Path, summary: Summary) -> None:
    """Note what a killed checkpoint left behind (diagnostics only; open removes it)."""
    if not directory.is_dir():
        return
    if (directory / "manifest.json.tmp").exists():
        summary.tmp_manifest += 1
    try:
        body = json.loads((directory / "manifest.json").read_text())["manifest"]
        listed = {s["segment"]["file"] for s in body["segments"]}
        listed |= {s["tombstones"]["file"] for s in body["segments"] if s["tombstones"]}
    except (OSError, ValueError, KeyError, TypeError):
        return
    if any(p.name not in listed for p in directory.glob("*.arrow")):
        summary.unreferenced_files += 1


def check_cycle(path: Path, model: Model, pending: dict | None, rng: np.random.Generator,
                summary: Summary, where: str, copy: Path | None = None) -> None:
    """Reopen the database, settle the in-flight operation, and check every row of both
    collections.

    With ``copy``, the check runs on a copy of the directory made there, and the database
    is left as the kill left it: the next writer recovers it (replays its log, cuts torn
    tails) and writes on, rather than starting from the checkpoint our close makes.
    """
    if copy is not None and path.exists():
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(path, copy)
        path = copy
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        db = vecstore.open(path, segment_bytes=crash_writer.SEGMENT_BYTES)
        try:
            assert not db.damaged, f"{where}: damaged collections {db.damaged}"
            on_crash = None if on_trained(pending) else pending
            if crash_writer.COLLECTION in db:
                check_collection(db.get_collection(crash_writer.COLLECTION), model, on_crash,
                                 rng, summary, where)
            else:
                # Killed before the first writer created the collection.
                assert not model.present and not model.dead and pending is None, \
                    f"{where}: the collection is gone"
            check_trained(db, model, pending if on_trained(pending) else None, rng, summary,
                          where)
        finally:
            db.close()
    for w in caught:
        assert issubclass(w.category, RuntimeWarning) and "torn tail" in str(w.message), \
            f"{where}: unexpected warning {w.category.__name__}: {w.message}"
        summary.torn_tails += 1


def check_collection(c, model: Model, pending: dict | None, rng: np.random.Generator,
                     summary: Summary, where: str) -> None:
    """The rows equal the model's, with or without the write in flight; search agrees."""
    found = read_database(c, where)
    settle(mismatch(found, model, model.present),
           lambda: mismatch(found, model, model.applied(pending)), pending, model, summary,
           f"{where}: the database holds {len(found)} rows that")
    summary.max_rows = max(summary.max_rows, len(found))
    summary.rows_checked += len(found)
    for id_ in list(model.dead)[:20]:
        assert id_ not in c, f"{where}: deleted id {id_} is back"
        with pytest.raises(NotFound):
            c.get([id_])
    check_search(c, *model.matrix(model.present), rng, where)


def settle(without: str, with_it, pending: dict | None, model: Model, summary: Summary,
           what: str) -> None:
    """Settle the operation in flight: lost when the database matches the model without
    it (``without``, how it differs, is ''), else applied to ``model`` when it matches the
    model with it (``with_it()`` says how it differs); fail when neither matches."""
    if not without:
        if pending is not None:
            summary.count(summary.in_flight_lost, kind(pending))
        return
    detail = f"model without it: {without}"
    if pending is not None:
        diff = with_it()
        if not diff:
            model.apply(pending)
            summary.count(summary.in_flight_applied, kind(pending))
            return
        detail += f"; model with it: {diff}"
    raise CycleFailure(f"{what} match neither model (in flight: {pending}): {detail}")


def check_trained(db, model: Model, pending: dict | None, rng: np.random.Generator,
                  summary: Summary, where: str) -> None:
    """Collection ``trained`` is absent or present, with its codec config and rows, as the
    model says with or without its operation in flight; search (reranked) agrees."""
    c = db.get_collection(TRAINED) if TRAINED in db else None
    found = None
    if c is not None:
        found = crash_writer.codec_digest(c.config()["codec"]), read_database(c, where)
    settle(trained_mismatch(found, model, model.trained),
           lambda: trained_mismatch(found, model, model.trained.applied(pending)), pending,
           model, summary, f"{where}: collection {TRAINED!r} and its rows")
    if found is not None and found[1]:
        summary.rows_checked += len(found[1])
        check_search(c, *model.matrix(model.trained.present), rng, where, rerank_all=True)


def trained_mismatch(found: tuple[str, dict] | None, model: Model,
                     state: TrainedModel) -> str:
    """'' when ``found`` (None when absent, else the codec digest and the rows) is ``state``,
    else what differs."""
    if found is None or state.codec is None:
        if (found is None) == (state.codec is None):
            return ""
        return "absent, expected present" if found is None else "present, expected absent"
    codec, rows = found
    if codec != state.codec:
        expected = "untrained" if state.codec == UNTRAINED else "trained"
        actual = "untrained" if codec == UNTRAINED else "another"
        return f"{actual} codec config {codec}, expected the {expected} one {state.codec}"
    return mismatch(rows, model, state.present)


def wait_to_kill(writer: WriterProcess, rng: np.random.Generator, where: str) -> str:
    """Wait for the moment to kill the writer, timed one of four ways; return which."""
    mode = str(rng.choice(["random", "checkpoint", "lifecycle", "open"],
                          p=[0.4, 0.3, 0.2, 0.1]))
    if mode == "open":
        time.sleep(rng.uniform(0.0, 0.03))
        return mode
    acked = writer.wait_for(lambda e: "op" in e or "end" in e, STARTUP_TIMEOUT)
    if acked is None:
        raise CycleFailure(f"{where}: no acknowledgement:\n{writer.stderr()}")
    if mode == "random":
        time.sleep(rng.uniform(0.02, 0.15))
        return mode
    # A few milliseconds into the next flush or compaction, or the next creation,
    # training or drop of the trained collection.
    time.sleep(rng.uniform(0.0, 0.05))
    if mode == "checkpoint":
        begun = writer.wait_for(lambda e: "begin" in e, 5.0)
        longest = 0.03 if begun and begun["begin"] == "compact" else 0.008
    else:
        target = str(rng.choice(list(LIFECYCLE_TARGETS), p=list(LIFECYCLE_TARGETS.values())))
        writer.wait_for(lambda e: e.get("intent", {}).get("op") == target, 5.0)
        longest = LIFECYCLE_KILL_DELAY[target]
    time.sleep(rng.uniform(0.0, longest))
    return mode


def run_cycles(tmp_path: Path, durability: str, cycles: int, seed: int) -> Summary:
    path = tmp_path / "db"
    collection_dir = path / "collections" / crash_writer.COLLECTION
    state_path = tmp_path / "state.json"
    rng = np.random.default_rng(seed)
    model = Model()
    summary = Summary()
    # Writers are started LOOKAHEAD cycles ahead: importing numpy, pyarrow and vecstore
    # takes most of a cycle, and goes on while earlier writers run and we check.
    waiting: collections.deque[WriterProcess] = collections.deque()
    started = 0
    writer = None
    try:
        for cycle in range(cycles):
            while len(waiting) < LOOKAHEAD and started < cycles:
                waiting.append(WriterProcess(path, seed * 100_003 + started, state_path,
                                             durability, tmp_path / f"writer-{started}.err"))
                started += 1
            writer = waiting.popleft()
            where = f"{durability} cycle {cycle} (VECSTORE_CRASH_SEED={seed})"
            state_path.write_text(json.dumps(model.state(rng)))
            t = time.monotonic()
            if writer.wait_for(lambda e: "ready" in e, STARTUP_TIMEOUT) is None:
                raise CycleFailure(f"{where}: writer did not start:\n{writer.stderr()}")
            t = summary.clock("starting", t)
            writer.go()
            mode = wait_to_kill(writer, rng, where)
            rc = writer.kill()
            if rc != -signal.SIGKILL:
                raise CycleFailure(f"{where}: writer exited with {rc}:\n{writer.stderr()}")
            t = summary.clock("writing", t)
            summary.count(summary.kill_modes, mode)
            pending, phase = replay_output(writer.lines, model, where)
            summary.acknowledged_ops += sum(1 for line in writer.lines
                                            if '"op"' in line and '"intent"' not in line)
            summary.count(summary.killed_in, phase)
            inspect_files(collection_dir, summary)
            on_copy = bool(rng.random() < 0.5)
            summary.checked_on_copy += on_copy
            check_cycle(path, model, pending, rng, summary, where,
                        copy=tmp_path / "copy" if on_copy else None)
            summary.clock("checking", t)
            summary.cycles += 1
    finally:
        for proc in (writer, *waiting):
            if proc is not None and proc.proc.poll() is None:
                proc.kill()
    return summary


def _report(durability: str, seed: int, summary: Summary) -> str:
    return (f"crash test ({durability}, VECSTORE_CRASH_SEED={seed}): {summary.cycles} cycles, "
            f"{summary.acknowledged_ops} acknowledged writes, kill modes {summary.kill_modes}, "
            f"killed in {summary.killed_in}, in flight and applied "
            f"{summary.in_flight_applied}, in flight and lost {summary.in_flight_lost}, "
            f"{summary.rows_checked} rows checked, torn log tails "
            f"{summary.torn_tails}, temporary manifest left {summary.tmp_manifest}, "
            f"unreferenced files left {summary.unreferenced_files}, checked on a copy "
            f"{summary.checked_on_copy} times, "
            f"at most {summary.max_rows} rows, seconds spent "
            f"{ {k: round(v, 1) for k, v in summary.seconds.items()} }")


def test_sigkill_loses_no_acknowledged_write(tmp_path):
    summary = run_cycles(tmp_path, "sync", CYCLES, BASE_SEED)
    report = _report("sync", BASE_SEED, summary)
    print(report)
    inside = summary.killed_in.get("flush", 0) + summary.killed_in.get("compact", 0)
    assert inside >= min(3, CYCLES // 10), f"too few kills inside flush or compact: {report}"
    inside = summary.killed_in.get("train", 0) + summary.killed_in.get("drop", 0)
    assert inside >= min(3, CYCLES // 10), f"too few kills inside train or drop: {report}"


def test_sigkill_in_batch_durability_loses_no_acknowledged_write(tmp_path):
    # batch durability hands each write to the OS before acknowledging it and fsyncs
    # later: only a power loss could lose it, never the death of the process.
    cycles = max(10, CYCLES // 5)
    seed = BASE_SEED + 1
    summary = run_cycles(tmp_path, "batch", cycles, seed)
    print(_report("batch", seed, summary))


# A process killed while it creates a new database. The window is microseconds wide, so
# random kills never find it: the child stalls there (os.open patched to wait when it
# meets the VECSTORE marker file, before or right after creating it) and is killed while
# it waits.
STALL_WHILE_CREATING = """
import os, sys, time
import vecstore

point, real_open = sys.argv[2], os.open

def stall():
    print("stalled", flush=True)
    time.sleep(60)

def patched_open(path, flags, *args, **kwargs):
    marker = os.path.basename(os.fsdecode(path)).startswith("VECSTORE")
    if marker and flags & os.O_CREAT and point == "before-marker":
        stall()
    fd = real_open(path, flags, *args, **kwargs)
    if marker and flags & os.O_CREAT and point == "marker-empty":
        stall()
    return fd

os.open = patched_open
vecstore.open(sys.argv[1]).close()
print("finished without stalling", flush=True)
"""


@pytest.mark.parametrize("point", ["before-marker", "marker-empty"])
def test_sigkill_while_creating_the_database(tmp_path, point):
    path = tmp_path / "db"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.Popen([sys.executable, "-c", STALL_WHILE_CREATING, str(path), point],
                            cwd=REPO, env=env, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"stalled\n"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    # Nothing was acknowledged: the database opens, empty, and takes writes.
    with vecstore.open(path) as db:
        assert db.list_collections() == []
        c = db.create_collection("c", dim=4, metric="ip", codec="flat")
        c.add(np.eye(4, dtype=np.float32), ids=[1, 2, 3, 4])
    with vecstore.open(path) as db:
        assert len(db.get_collection("c")) == 4
