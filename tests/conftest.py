"""Shared fixtures: real embedding sets, loaded once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from bench.datasets import BUNDLED_DATA_DIR, shared_data_dir


def _load_set(path: Path) -> dict[str, np.ndarray]:
    arrays = {"base": np.load(path / "base.npy").astype(np.float32),
              "queries": np.load(path / "queries.npy").astype(np.float32)}
    for gt in path.glob("gt_*.npy"):
        arrays[gt.stem] = np.load(gt)
    return arrays


def _shared_set(name: str) -> dict[str, np.ndarray]:
    root = shared_data_dir()
    if root is None or not (root / name).is_dir():
        pytest.skip(f"shared data set {name} is not available")
    return _load_set(root / name)


@pytest.fixture(scope="module")
def one_blas_thread():
    """Run a module's linear algebra on one BLAS thread.

    For small matrices on a machine whose cores are shared, BLAS worker threads waiting
    for a core make a 384 x 384 QR factorization up to a hundred times slower.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="session")
def text_minilm() -> dict[str, np.ndarray]:
    """text-minilm384: 100k unit vectors, d=384, with exact ip ground truth."""
    return _shared_set("text-minilm384")


@pytest.fixture(scope="session")
def glove50() -> dict[str, np.ndarray]:
    """glove50: 200k raw vectors, d=50, with exact ip, l2 and cosine ground truth."""
    return _shared_set("glove50")


@pytest.fixture(scope="session")
def wordnet() -> dict[str, np.ndarray]:
    """The bundled wordnet-minilm384 set: 25k unit vectors, d=384, always present."""
    return _load_set(BUNDLED_DATA_DIR / "wordnet-minilm384")
