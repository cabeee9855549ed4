"""The database: a named set of collections."""

from __future__ import annotations

import re
import threading

from vecstore.codecs.registry import make_codec
from vecstore.collection import METRICS, STORED_VECTOR_DTYPES, Collection
from vecstore.errors import AlreadyExists, Closed, InvalidArgument, NotFound

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def check_collection_name(name) -> str:
    """Return ``name`` if it is a valid collection name, else raise InvalidArgument.

    Names are 1-128 characters of letters, digits, ``_``, ``.`` and ``-``, not starting
    with ``.`` or ``-`` (so they are safe as file names).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"invalid collection name {name!r}: use 1-128 letters, digits, '_', '.' or '-', "
            "starting with a letter, digit or '_'"
        )
    return name


class Database:
    """Collections by name. Use ``vecstore.open()`` to get one; close it when done."""

    def __init__(self) -> None:
        self._collections: dict[str, Collection] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._collections)} collections"
        return f"Database(in-memory, {state})"

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __contains__(self, name) -> bool:
        return name in self._collections

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("the database is closed")

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
        if metric not in METRICS:
            raise InvalidArgument(f"unknown metric {metric!r}; expected one of {METRICS}")
        if store_vectors is not None and store_vectors not in STORED_VECTOR_DTYPES:
            raise InvalidArgument(
                f"store_vectors must be None, 'float16' or 'float32', got {store_vectors!r}"
            )
        if store_vectors is not None and rescore_codec is not None:
            raise InvalidArgument("choose one of store_vectors and rescore_codec for rescoring")
        coder = make_codec(codec, dim=dim, seed=seed, rotation=rotation)
        finer = (make_codec(rescore_codec, dim=dim, seed=seed, rotation=rotation)
                 if rescore_codec is not None else None)
        with self._lock:
            self._check_open()
            if name in self._collections:
                raise AlreadyExists(f"collection {name!r} already exists")
            collection = Collection(name, coder, metric, store_vectors=store_vectors,
                                    rescore_codec=finer)
            self._collections[name] = collection
        return collection

    def get_collection(self, name: str) -> Collection:
        """The collection called ``name``; NotFound if there is none."""
        self._check_open()
        try:
            return self._collections[name]
        except (KeyError, TypeError):
            raise NotFound(f"no collection named {name!r}") from None

    def list_collections(self) -> list[str]:
        """Names of all collections, sorted."""
        self._check_open()
        return sorted(self._collections)

    def drop_collection(self, name: str) -> None:
        """Delete the collection and its vectors; NotFound if there is none."""
        self._check_open()
        with self._lock:
            collection = self._collections.pop(name, None) if isinstance(name, str) else None
        if collection is None:
            raise NotFound(f"no collection named {name!r}")
        collection._close()

    def close(self) -> None:
        """Close the database and its collections. Safe to call more than once."""
        with self._lock:
            for collection in self._collections.values():
                collection._close()
            self._closed = True


def open(path: str | None = None) -> Database:  # noqa: A001 - mirrors the builtin on purpose
    """Open a database. ``vecstore.open()`` gives an in-memory database.

    On-disk databases (a directory path) are not available in this release; passing a
    path raises InvalidArgument rather than silently keeping data in memory.
    """
    if path is not None:
        raise InvalidArgument(
            "on-disk databases are not available in this release; "
            "call vecstore.open() for an in-memory database"
        )
    return Database()
