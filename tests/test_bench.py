"""The benchmark harness: data set formats, the result schema, runs, plots and peers."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import bench.datasets as datasets
from bench.__main__ import main
from bench.datasets import exact_ground_truth, load_dataset
from bench.formats import read_bvecs, read_fvecs, read_ivecs, write_vecs
from bench.metrics import recall_at
from bench.peers import peer_specs
from bench.plot import load_rows
from bench.run import codec_family
from bench.schema import REQUIRED, validate_row


def _vectors(rng, n, dim):
    return rng.standard_normal((n, dim)).astype(np.float32)


# TEXMEX .fvecs / .ivecs / .bvecs


def test_vecs_files_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    floats = _vectors(rng, 7, 5)
    ints = rng.integers(-1000, 1000, size=(4, 3)).astype(np.int32)
    bytes_ = rng.integers(0, 256, size=(6, 9)).astype(np.uint8)
    for name, values, reader in (("a.fvecs", floats, read_fvecs), ("a.ivecs", ints, read_ivecs),
                                 ("a.bvecs", bytes_, read_bvecs)):
        write_vecs(tmp_path / name, values)
        back = reader(tmp_path / name)
        assert back.dtype == values.dtype.newbyteorder("=")
        np.testing.assert_array_equal(back, values)
        np.testing.assert_array_equal(reader(tmp_path / name, max_rows=2), values[:2])
    # The TEXMEX layout: each record is an int32 dimension, then the values.
    raw = np.fromfile(tmp_path / "a.fvecs", dtype="<i4").reshape(7, 6)
    assert (raw[:, 0] == 5).all()
    np.testing.assert_array_equal(raw[:, 1:].view("<f4"), floats)


def test_vecs_reader_rejects_truncated_and_mixed_files(tmp_path):
    write_vecs(tmp_path / "a.fvecs", np.ones((3, 4), dtype=np.float32))
    data = (tmp_path / "a.fvecs").read_bytes()
    (tmp_path / "cut.fvecs").write_bytes(data[:-2])
    with pytest.raises(ValueError, match="whole number of 20-byte records"):
        read_fvecs(tmp_path / "cut.fvecs")
    mixed = bytearray(data)
    mixed[20:24] = np.array([9], dtype="<i4").tobytes()
    (tmp_path / "mixed.fvecs").write_bytes(bytes(mixed))
    with pytest.raises(ValueError, match="record 1 has dimension 9"):
        read_fvecs(tmp_path / "mixed.fvecs")
    with pytest.raises(ValueError, match="unknown suffix"):
        write_vecs(tmp_path / "a.npy", np.ones((2, 2)))


def _texmex_set(directory, rng, n=150, nq=6, dim=8, suffix=".fvecs", with_gt=True):
    directory.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 50, size=(n, dim)).astype(np.float32)
    queries = rng.integers(0, 50, size=(nq, dim)).astype(np.float32)
    write_vecs(directory / f"tiny_base{suffix}", base)
    write_vecs(directory / f"tiny_query{suffix}", queries)
    gt, _ = exact_ground_truth(base, queries, "l2", k=100)
    if with_gt:
        write_vecs(directory / "tiny_groundtruth.ivecs", gt)
    return base, queries, gt


@pytest.mark.parametrize("suffix", [".fvecs", ".bvecs"])
def test_texmex_directory_and_base_file_load_with_their_ground_truth(tmp_path, suffix):
    rng = np.random.default_rng(1)
    base, queries, gt = _texmex_set(tmp_path / "tiny", rng, suffix=suffix)
    for source in (tmp_path / "tiny", tmp_path / "tiny" / f"tiny_base{suffix}"):
        ds = load_dataset(source, cache_dir=tmp_path / "cache")
        assert ds.name == "tiny" and ds.metric == "l2" and ds.dim == 8
        assert ds.base.dtype == np.float32 and ds.queries.dtype == np.float32
        np.testing.assert_array_equal(ds.base, base)
        np.testing.assert_array_equal(ds.queries, queries)
        np.testing.assert_array_equal(ds.ground_truth(), gt)
    assert not (tmp_path / "cache").exists()


def test_texmex_explicit_files_and_computed_ground_truth(tmp_path):
    rng = np.random.default_rng(2)
    base, queries, _ = _texmex_set(tmp_path / "set", rng, with_gt=False)
    other_queries = _vectors(rng, 3, 8)
    write_vecs(tmp_path / "other.fvecs", other_queries)
    ds = load_dataset(tmp_path / "set" / "tiny_base.fvecs", query_file=tmp_path / "other.fvecs",
                      metric="ip", cache_dir=tmp_path / "cache")
    assert ds.metric == "ip"
    np.testing.assert_array_equal(ds.queries, other_queries)
    expected, _ = exact_ground_truth(base, other_queries, "ip", k=100)
    np.testing.assert_array_equal(ds.ground_truth(), expected)
    assert len(list((tmp_path / "cache").glob("gt_ip_*.npy"))) == 1
    (tmp_path / "set" / "tiny_query.fvecs").unlink()
    with pytest.raises(FileNotFoundError, match="tiny_query.fvecs"):
        load_dataset(tmp_path / "set")


# ann-benchmarks HDF5


@pytest.mark.parametrize("distance, metric", [("angular", "cosine"), ("euclidean", "l2"),
                                              ("dot", "ip")])
def test_ann_benchmarks_hdf5_loads_with_its_metric_and_neighbors(tmp_path, distance, metric):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(3)
    base, queries = _vectors(rng, 120, 6), _vectors(rng, 5, 6)
    neighbors, _ = exact_ground_truth(base, queries, metric, k=100)
    path = tmp_path / f"tiny-6-{distance}.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("train", data=base)
        f.create_dataset("test", data=queries)
        f.create_dataset("neighbors", data=neighbors.astype(np.int32))
        f.attrs["distance"] = distance
    ds = load_dataset(path, cache_dir=tmp_path / "cache")
    assert ds.name == f"tiny-6-{distance}" and ds.metric == metric
    np.testing.assert_array_equal(ds.base, base)
    np.testing.assert_array_equal(ds.ground_truth(), neighbors)

    sliced = load_dataset(path, max_base=100, max_queries=2, cache_dir=tmp_path / "cache")
    assert sliced.base.shape == (100, 6) and sliced.queries.shape == (2, 6)
    expected, _ = exact_ground_truth(base[:100], queries[:2], metric, k=100)
    np.testing.assert_array_equal(sliced.ground_truth(), expected)


def test_hdf5_with_an_unsupported_distance_is_rejected(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "bits.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("train", data=np.ones((3, 2)))
        f.create_dataset("test", data=np.ones((1, 2)))
        f.attrs["distance"] = "jaccard"
    with pytest.raises(ValueError, match="'jaccard' is not supported"):
        load_dataset(path)


def test_hdf5_without_h5py_names_the_missing_package(tmp_path, monkeypatch):
    path = tmp_path / "set.hdf5"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="pip install h5py"):
        load_dataset(path)


# numpy directories


def test_npy_directory_without_ground_truth_computes_it_and_max_base_slices(tmp_path):
    rng = np.random.default_rng(4)
    base, queries = _vectors(rng, 130, 4), _vectors(rng, 5, 4)
    (tmp_path / "set").mkdir()
    np.save(tmp_path / "set" / "base.npy", base)
    np.save(tmp_path / "set" / "queries.npy", queries)
    np.save(tmp_path / "set" / "gt_l2.npy", np.zeros((5, 100), dtype=np.int32))
    ds = load_dataset(tmp_path / "set", cache_dir=tmp_path / "cache")
    expected, _ = exact_ground_truth(base, queries, "ip", k=100)
    np.testing.assert_array_equal(ds.ground_truth("ip"), expected)
    # The stored l2 file covers all 130 rows; a slice of the base gets its own.
    sliced = load_dataset(tmp_path / "set", max_base=110, cache_dir=tmp_path / "cache")
    assert sliced.base.shape == (110, 4)
    expected, _ = exact_ground_truth(base[:110], queries, "l2", k=100)
    np.testing.assert_array_equal(sliced.ground_truth("l2"), expected)
    with pytest.raises(ValueError, match="max_base must be a positive integer"):
        load_dataset(tmp_path / "set", max_base=0)


# A real run, its rows and plots


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Result rows of a run over 2,000 bundled vectors and 20 queries, and their file."""
    out = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets, "CACHE_DIR", out / "cache")
        assert main(["run", "--base", "2000", "--queries", "20", "--codecs", "flat,tq2",
                     "--seeds", "2", "--single-queries", "5", "--out", str(out)]) == 0
    (path,) = out.glob("*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()], path


def test_a_real_run_writes_valid_rows(tiny_run):
    rows, path = tiny_run
    assert path.name.startswith("wordnet-minilm384-ip-")
    assert [row["method"] for row in rows] == ["flat", "tq2"]
    for row in rows:
        validate_row(row)
        assert row["kind"] == "vecstore" and row["n_base"] == 2000 and row["n_queries"] == 20
    flat, tq2 = rows
    assert flat["seeds"] == [0] and flat["recall_at_10"] == 1.0 and flat["family"] == "flat"
    assert tq2["seeds"] == [0, 1] and tq2["family"] == "tq" and tq2["bytes_per_vector"] == 100
    assert len(tq2["recall_at_10_seeds"]) == 2
    assert tq2["recall_at_10"] == tq2["recall_at_10_mean"] == pytest.approx(
        np.mean(tq2["recall_at_10_seeds"]), abs=1e-4)
    assert tq2["recall_at_10_std"] == pytest.approx(np.std(tq2["recall_at_10_seeds"]), abs=1e-4)


def test_rows_missing_a_key_or_of_the_wrong_type_fail(tiny_run):
    row = tiny_run[0][1]
    for key in ("recall_at_10", "family", "seeds", "faiss"):
        broken = {k: v for k, v in row.items() if k != key}
        with pytest.raises(ValueError, match=f"missing key '{key}'"):
            validate_row(broken)
    for key, value, message in (("k", "10", "'k' must be int"),
                                ("kind", "library", "'kind' must be one of"),
                                ("recall_at_1", 1.5, "recall_at_1' is a recall"),
                                ("build_s", float("nan"), "'build_s' must be a finite"),
                                ("recall_at_10_seeds", [0.5], "2 recalls")):
        with pytest.raises(ValueError, match=message):
            validate_row({**row, key: value})
    assert set(REQUIRED) <= set(row)


def test_plot_writes_one_png_per_plot(tiny_run, tmp_path, capsys):
    rows, path = tiny_run
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(path.read_text() + json.dumps({"codec": "tq4", "encode_s": 0.1}) + "\n")
    assert load_rows([mixed]) == rows
    assert "skipped 1 rows" in capsys.readouterr().err
    assert main(["plot", str(mixed), "--out", str(tmp_path / "plots")]) == 0
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["wordnet-minilm384-ip-recall-vs-bytes.png",
                    "wordnet-minilm384-ip-recall-vs-qps.png"]
    for png in pngs:
        assert (tmp_path / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_codec_families():
    families = {"flat": "flat", "tq1": "tq", "tq4-prod": "tq-prod", "tq3+qjl": "tq-prod",
                "pq48x8": "pq", "pq96x4": "pq-4bit", "mib": "mib", "mib4": "mib",
                "mib-hamming": "mib-hamming", "fp8": "fp8", "fp8-pca192": "fp8",
                "fp16": "fp16", "tq4c": "tq-corrected"}
    assert {spec: codec_family(spec) for spec in families} == families


# Peers


@pytest.mark.parametrize("library", ["faiss", "turbovec", "rabitqlib"])
def test_peers_find_neighbours_on_tiny_data(library):
    pytest.importorskip(library)
    rng = np.random.default_rng(5)
    dim = 64
    base, queries = _vectors(rng, 600, dim), _vectors(rng, 10, dim)
    truth, _ = exact_ground_truth(base, queries, "cosine", k=10)
    specs, notes = peer_specs([library], dim, "cosine", threads=1)
    assert specs and not notes
    with threadpool_limits(limits=1):
        for spec in specs:
            peer = spec.make(0)
            assert peer.build(base, "cosine") >= 0
            ids = peer.search(queries, 10)
            assert ids.dtype == np.int64 and ids.shape == (10, 10)
            assert 0 < peer.bytes_per_vector <= 4 * dim
            assert peer.bits_per_dim == pytest.approx(peer.bytes_per_vector * 8 / dim)
            # Chance is 10 / 600; even one bit per dimension finds several times more.
            floor = 0.99 if peer.bytes_per_vector >= 2 * dim else 0.1
            assert recall_at(ids, truth, 10) >= floor, peer.name
            peer.close()


def test_peer_selection_by_library_and_name():
    pytest.importorskip("faiss")
    specs, _ = peer_specs(["faiss-rabitq4", "faiss-flat", "faiss-flat"], 384, "ip")
    assert [spec.name for spec in specs] == ["faiss-rabitq4", "faiss-flat"]
    names = {spec.name for spec in peer_specs(["faiss"], 384, "ip")[0]}
    assert {"faiss-pq48x8", "faiss-pq96x8", "faiss-pq192x8", "faiss-pq96x4fs",
            "faiss-pq192x4fs", "faiss-rabitq1", "faiss-rabitq2", "faiss-rabitq4"} <= names
    # At d = 50 the sub-space counts must divide 50.
    names = {spec.name for spec in peer_specs(["faiss"], 50, "l2")[0]}
    assert {"faiss-pq10x8", "faiss-pq25x8", "faiss-pq25x4fs", "faiss-pq50x4fs"} <= names
    with pytest.raises(ValueError, match="unknown peer 'faiss-nope'"):
        peer_specs(["faiss-nope"], 384, "ip")


def test_turbovec_is_skipped_with_a_note_where_it_cannot_run():
    pytest.importorskip("turbovec")
    for dim, metric, note in ((384, "l2", "inner product only"), (50, "ip", "d % 8 == 0")):
        specs, notes = peer_specs(["turbovec"], dim, metric)
        assert specs == [] and note in notes[0]
