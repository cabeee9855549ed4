"""The database: a named set of collections."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

from vecstore.codecs.registry import codec_from_config, make_codec
from vecstore.collection import DEFAULT_SEGMENT_BYTES, METRICS, STORED_VECTOR_DTYPES, Collection
from vecstore.errors import AlreadyExists, Closed, DataLoss, InvalidArgument, NotFound
from vecstore.merge_policy import TieredMergePolicy
from vecstore.search.device import SharedScanner
from vecstore.search.executor import check_device

DURABILITIES = ("sync", "batch")
DEFAULT_SYNC_INTERVAL = 0.05
DEFAULT_MERGE_POLICY = TieredMergePolicy()

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def check_collection_name(name) -> str:
    """Return ``name`` if it is a valid collection name, else raise InvalidArgument.

    Names are 1-128 characters of letters, digits, ``_``, ``.`` and ``-``, not starting
    with ``.`` or ``-`` (so they are safe as file names).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid collection name {name!r:.60}: use 1-128 letters, digits, '_', '.' or '-', "
            "starting with a letter, digit or '_'"
        )
    return name


def check_collection_options(metric: str, store_vectors: str | None,
                             rescore_codec: str | None) -> None:
    """Raise InvalidArgument unless ``metric``, ``store_vectors`` and ``rescore_codec``
    are a valid choice for ``Database.create_collection`` (the codecs are checked when
    they are built)."""
    if metric not in METRICS:
        raise InvalidArgument(f"unknown metric {metric!r}; expected one of {METRICS}")
    if store_vectors is not None and store_vectors not in STORED_VECTOR_DTYPES:
        raise InvalidArgument(
            f"store_vectors must be None, 'float16' or 'float32', got {store_vectors!r}"
        )
    if store_vectors is not None and rescore_codec is not None:
        raise InvalidArgument("choose one of store_vectors and rescore_codec for rescoring")


class Database:
    """Collections by name. Use ``vecstore.open()`` to get one; close it when done.

    In memory when ``path`` is None. On disk, each collection is a directory under
    ``path/collections`` (see ``vecstore.storage``); a lock file keeps other processes
    from opening the same database for writing.
    """

    def __init__(self, path: Path | None = None, *, durability: str = "sync",
                 sync_interval: float = DEFAULT_SYNC_INTERVAL,
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES, device: str = "auto",
                 merge_policy: TieredMergePolicy | None = DEFAULT_MERGE_POLICY):
        self.path = path
        self.merge_policy = merge_policy
        self.device = check_device(device)
        self.durability = durability
        self.sync_interval = sync_interval
        self.segment_bytes = segment_bytes
        self._collections: dict[str, Collection] = {}
        # One GPU scanner, and so one device memory budget, for every collection.
        self._gpu = SharedScanner()
        self._damaged: dict[str, DataLoss] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._dir = None
        if path is not None:
            from vecstore.storage.database_dir import DatabaseDir

            self._dir = DatabaseDir.open(path)
            try:
                self._load_collections()
            except BaseException:
                self._dir.close()
                raise

    def _load_collections(self) -> None:
        for name, directory in self._dir.collection_dirs():
            try:
                self._collections[name] = self._dir.load_collection(
                    directory, self._collection_from_config,
                    self.durability, self.sync_interval)
            except DataLoss as exc:
                self._damaged[name] = exc

    def __repr__(self) -> str:
        where = "in-memory" if self.path is None else str(self.path)
        state = "closed" if self._closed else f"{len(self._collections)} collections"
        return f"Database({where}, {state})"

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __contains__(self, name) -> bool:
        return name in self._collections or name in self._damaged

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("the database is closed")

    @property
    def damaged(self) -> dict[str, DataLoss]:
        """Collections that failed verification on open, with the error naming the file."""
        return dict(self._damaged)

    def _collection_from_config(self, config: dict, store) -> Collection:
        codec = codec_from_config(config["codec"])
        finer = config.get("rescore_codec")
        return Collection(config["name"], codec, config["metric"],
                          store_vectors=config.get("store_vectors"),
                          rescore_codec=codec_from_config(finer) if finer else None,
                          store=store, segment_bytes=self.segment_bytes, device=self.device,
                          merge_policy=self.merge_policy, gpu_scanner=self._gpu)

    def create_collection(self, name: str, *, dim: int, metric: str = "cosine",
                          codec: str = "tq4", seed: int = 0, rotation: str = "auto",
                          store_vectors: str | None = None,
                          rescore_codec: str | None = None) -> Collection:
        """Create an empty collection.

        Parameters
        ----------
        name : str
            Unique name (letters, digits, ``_``, ``.``, ``-``).
        dim : int
            Vector dimension, >= 2.
        metric : {"cosine", "ip", "l2"}
            ``cosine`` normalizes vectors and queries; ``ip`` ranks by inner product;
            ``l2`` by squared Euclidean distance.
        codec : str
            A codec spec such as ``"tq4"``, ``"tq3-prod"`` or ``"flat"``.
        seed, rotation
            The codec's random seed and rotation kind ("auto", "dense", "hadamard").
        store_vectors : {None, "float16", "float32"}
            Also keep the vectors themselves, for ``search(..., rescore=r)`` and exact ``get``.
        rescore_codec : str, optional
            A finer codec spec (e.g. ``"tq8"``) kept beside the main codes for rescoring,
            when storing the vectors is too costly. Not combined with ``store_vectors``.
        """
        self._check_open()
        check_collection_name(name)
        check_collection_options(metric, store_vectors, rescore_codec)
        coder = make_codec(codec, dim=dim, seed=seed, rotation=rotation)
        finer = (make_codec(rescore_codec, dim=dim, seed=seed, rotation=rotation)
                 if rescore_codec is not None else None)
        with self._lock:
            self._check_open()
            if name in self:
                raise AlreadyExists(f"collection {name!r} already exists")
            collection = Collection(name, coder, metric, store_vectors=store_vectors,
                                    rescore_codec=finer, segment_bytes=self.segment_bytes,
                                    device=self.device, merge_policy=self.merge_policy,
                                    gpu_scanner=self._gpu)
            if self._dir is not None:
                collection._store = self._dir.create_collection(
                    name, collection.config(), self.durability, self.sync_interval)
            self._collections[name] = collection
        return collection

    def get_collection(self, name: str) -> Collection:
        """The collection called ``name``; InvalidArgument if it is not a valid name,
        NotFound if there is none, DataLoss if its files failed verification when the
        database was opened."""
        self._check_open()
        check_collection_name(name)
        if name in self._damaged:
            raise self._damaged[name]
        try:
            return self._collections[name]
        except (KeyError, TypeError):
            raise NotFound(f"no collection named {name!r}") from None

    def list_collections(self) -> list[str]:
        """Names of all collections (damaged ones included), sorted."""
        self._check_open()
        return sorted([*self._collections, *self._damaged])

    def drop_collection(self, name: str) -> None:
        """Delete the collection and its files; InvalidArgument if ``name`` is not a valid
        name, NotFound if there is none."""
        self._check_open()
        check_collection_name(name)
        with self._lock:
            if name not in self:
                raise NotFound(f"no collection named {name!r}")
            collection = self._collections.pop(name, None)
            self._damaged.pop(name, None)
            if collection is not None:
                collection._abandon()
            if self._dir is not None:
                self._dir.drop_collection(name)

    def flush(self) -> None:
        """Flush every collection (see ``Collection.flush``). A collection that fails to
        flush does not stop the others; the first failure is raised once all were tried."""
        self._check_open()
        _each(list(self._collections.values()), lambda collection: collection.flush())

    def close(self) -> None:
        """Flush and close the database and its collections. Safe to call more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                _each(list(self._collections.values()), lambda collection: collection.close())
            finally:
                if self._dir is not None:
                    self._dir.close()


def _each(collections: list[Collection], action) -> None:
    """Apply ``action`` to every collection, then raise the first exception it raised."""
    failures = []
    for collection in collections:
        try:
            action(collection)
        except Exception as exc:  # the other collections still get their turn
            failures.append(exc)
    if failures:
        raise failures[0]


def open(path: str | os.PathLike | None = None, *, durability: str = "sync",  # noqa: A001
         sync_interval: float = DEFAULT_SYNC_INTERVAL,
         segment_bytes: int = DEFAULT_SEGMENT_BYTES, device: str = "auto",
         merge_policy: TieredMergePolicy | None = DEFAULT_MERGE_POLICY) -> Database:
    """Open a database: in memory with no ``path``, else the directory at ``path``,
    created if absent.

    durability : {"sync", "batch"}
        ``sync`` (default): every add, upsert and delete is fsynced to the write-ahead
        log before it returns. ``batch``: writes reach the operating system before they
        return (a crash of the process loses nothing) and are fsynced every
        ``sync_interval`` seconds, so a power loss or kernel crash can lose the writes
        of the last interval.
    segment_bytes : int
        The memtable is sealed into a segment file once its rows take this many bytes.
    merge_policy : TieredMergePolicy or None
        How sealed segments below ``segment_bytes`` merge in the background (size-tiered,
        three segments of a tier at a time by default); None leaves them to ``compact()``.
    device : {"auto", "cpu", "gpu"}
        Where searches scan codes. ``auto`` uses the GPU when CuPy sees a CUDA device and
        the codec has a GPU kernel (``tq{b}``, ``tq{b}c``, PQ, asymmetric MIB), else the
        CPU; ``gpu`` raises GpuUnavailable, with the reason, when it cannot.

    Raises Locked if another process has the directory open, InvalidArgument for a path
    that is a file or a directory not made by vecstore.
    """
    if durability not in DURABILITIES:
        raise InvalidArgument(f"durability must be one of {DURABILITIES}, got {durability!r}")
    if isinstance(sync_interval, bool) or not isinstance(sync_interval, int | float) \
            or not 0 < sync_interval <= 60:
        raise InvalidArgument(f"sync_interval must be in (0, 60] seconds, got {sync_interval!r}")
    if isinstance(segment_bytes, bool) or not isinstance(segment_bytes, int) \
            or segment_bytes < 1:
        raise InvalidArgument(f"segment_bytes must be a positive integer, got {segment_bytes!r}")
    if merge_policy is not None and not isinstance(merge_policy, TieredMergePolicy):
        raise InvalidArgument(f"merge_policy must be a TieredMergePolicy or None, got "
                              f"{type(merge_policy).__name__}")
    return Database(None if path is None else Path(path), durability=durability,
                    sync_interval=float(sync_interval), segment_bytes=segment_bytes,
                    device=check_device(device), merge_policy=merge_policy)
