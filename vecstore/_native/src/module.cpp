// Python bindings of the CPU scan kernels (nanobind): the path by name, threads over rows,
// and the fused top-k. Arrays come in without copies; the GIL is released while
// scanning.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "fastscan.h"
#include "scan.h"

namespace nb = nanobind;
using namespace vecstore;

namespace {

// The compiled paths this CPU can run, fastest first. Every path scores exactly with the
// scalar byte-table scan; the SIMD ones run the FastScan pass of the nibble scan.
std::vector<std::string> available_paths() {
  std::vector<std::string> paths;
#if defined(VECSTORE_X86)
  if (fastscan::cpu_has_avx512()) paths.push_back("avx512");
  if (fastscan::cpu_has_avx2()) paths.push_back("avx2");
#endif
  paths.push_back("scalar");
  return paths;
}

NibbleAccumulate accumulate_for(const std::string& path) {
  const std::vector<std::string> paths = available_paths();
  if (std::find(paths.begin(), paths.end(), path) == paths.end())
    throw std::invalid_argument("this CPU or build has no " + path + " scan path");
#if defined(VECSTORE_X86)
  if (path == "avx512") return fastscan::avx512::accumulate;
  if (path == "avx2") return fastscan::avx2::accumulate;
#endif
  return fastscan::scalar::accumulate;
}

template <typename T, typename... Shape>
using Array = nb::ndarray<T, nb::numpy, nb::c_contig, nb::device::cpu, Shape...>;
using Rows = nb::ndarray<const uint8_t, nb::numpy, nb::ndim<2>, nb::device::cpu>;
using Live = std::optional<Array<const bool, nb::ndim<1>>>;

// What every scan of one batch shares: codes and their per-row arrays, checked.
struct Batch {
  Rows codes;
  Array<const float, nb::ndim<1>> norms;
  Live live;
  Array<const int64_t, nb::ndim<1>> ties;
  Array<const float, nb::ndim<1>> query_sq_norms;
  std::size_t k;
  Metric metric;

  std::ptrdiff_t rows() const { return static_cast<std::ptrdiff_t>(codes.shape(0)); }

  void check(std::ptrdiff_t nq, std::ptrdiff_t n_bytes) const {
    const std::size_t n = codes.shape(0);
    if (codes.stride(1) != 1 || codes.shape(1) < static_cast<std::size_t>(n_bytes))
      throw std::invalid_argument("codes must be (n, >= P) uint8 with contiguous rows");
    if (norms.shape(0) != n || ties.shape(0) != n || (live && live->shape(0) != n) ||
        query_sq_norms.shape(0) != static_cast<std::size_t>(nq))
      throw std::invalid_argument("norms, live, ties and query norms must match the codes");
    if (k == 0) throw std::invalid_argument("k must be positive");
  }

  LutScan scan(const float* tables, std::ptrdiff_t n_bytes, std::ptrdiff_t q) const {
    return LutScan{tables, codes.data(), codes.stride(0), n_bytes, norms.data(),
                   live ? reinterpret_cast<const uint8_t*>(live->data()) : nullptr,
                   ties.data(), metric, query_sq_norms.data()[q]};
  }
};

// Keys (nq, k) float32, rows and ties (nq, k) int64 of each query's best candidates,
// padded with +inf, -1 and the largest tie.
nb::tuple results(std::vector<std::vector<Candidate>> best, std::size_t k) {
  const std::size_t nq = best.size();
  auto* keys = new float[nq * k];
  auto* rows = new int64_t[nq * k];
  auto* ties = new int64_t[nq * k];
  for (std::size_t q = 0; q < nq; ++q) {
    for (std::size_t i = 0; i < k; ++i) {
      const bool filled = i < best[q].size();
      keys[q * k + i] = filled ? best[q][i].key : std::numeric_limits<float>::infinity();
      rows[q * k + i] = filled ? best[q][i].row : -1;
      ties[q * k + i] = filled ? best[q][i].tie : std::numeric_limits<int64_t>::max();
    }
  }
  const std::size_t shape[2] = {nq, k};
  nb::capsule own_keys(keys, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  nb::capsule own_rows(rows, [](void* p) noexcept { delete[] static_cast<int64_t*>(p); });
  nb::capsule own_ties(ties, [](void* p) noexcept { delete[] static_cast<int64_t*>(p); });
  return nb::make_tuple(Array<float>(keys, 2, shape, own_keys),
                        Array<int64_t>(rows, 2, shape, own_rows),
                        Array<int64_t>(ties, 2, shape, own_ties));
}

// The exact scan of rows [0, n) split across `workers` threads, merged into one top-k.
std::vector<Candidate> exact_topk(const LutScan& scan, std::ptrdiff_t n, std::size_t k,
                                  std::size_t workers) {
  std::vector<TopK> tops(workers, TopK(k));
  std::vector<std::thread> pool;
  const std::ptrdiff_t per = (n + workers - 1) / workers;
  for (std::size_t w = 0; w < workers; ++w) {
    const std::ptrdiff_t begin = std::min<std::ptrdiff_t>(n, w * per);
    const std::ptrdiff_t end = std::min<std::ptrdiff_t>(n, begin + per);
    if (w + 1 == workers) {
      scalar::lut_scan(scan, begin, end, tops[w]);
    } else {
      pool.emplace_back([&, w, begin, end] { scalar::lut_scan(scan, begin, end, tops[w]); });
    }
  }
  for (auto& t : pool) t.join();
  TopK merged(k);
  for (auto& top : tops)
    for (const Candidate& c : top.sorted()) merged.push(c.key, c.tie, c.row);
  return merged.sorted();
}

std::size_t workers_for(int threads, std::ptrdiff_t n) {
  return static_cast<std::size_t>(
      std::max<std::ptrdiff_t>(1, std::min<std::ptrdiff_t>(threads, (n + 4095) / 4096)));
}

nb::tuple lut_topk(Array<const float, nb::ndim<3>> tables, Rows codes,
                   Array<const float, nb::ndim<1>> norms, Live live,
                   Array<const int64_t, nb::ndim<1>> ties, std::size_t k, int metric,
                   Array<const float, nb::ndim<1>> query_sq_norms, int threads) {
  const std::ptrdiff_t nq = tables.shape(0), n_bytes = tables.shape(1);
  if (tables.shape(2) != 256) throw std::invalid_argument("tables must be (nq, P, 256)");
  const Batch batch{codes, norms, live, ties, query_sq_norms, k, static_cast<Metric>(metric)};
  batch.check(nq, n_bytes);
  std::vector<std::vector<Candidate>> best(nq);
  {
    nb::gil_scoped_release release;
    const std::size_t workers = workers_for(threads, batch.rows());
    for (std::ptrdiff_t q = 0; q < nq; ++q)
      best[q] = exact_topk(batch.scan(tables.data() + q * n_bytes * 256, n_bytes, q),
                           batch.rows(), k, workers);
  }
  return results(std::move(best), k);
}

nb::tuple nibble_topk(Array<const float, nb::ndim<3>> nibble_tables,
                      Array<const uint8_t, nb::ndim<1>> blocked,
                      Array<const float, nb::ndim<3>> tables, Rows codes,
                      Array<const float, nb::ndim<1>> norms, Live live,
                      Array<const int64_t, nb::ndim<1>> ties, std::size_t k, int metric,
                      Array<const float, nb::ndim<1>> query_sq_norms, const std::string& path,
                      int threads) {
  const std::ptrdiff_t nq = tables.shape(0), n_bytes = tables.shape(1);
  if (tables.shape(2) != 256 || nibble_tables.shape(0) != static_cast<std::size_t>(nq) ||
      nibble_tables.shape(1) != static_cast<std::size_t>(2 * n_bytes) ||
      nibble_tables.shape(2) != 16)
    throw std::invalid_argument("tables must be (nq, P, 256) and nibble tables (nq, 2P, 16)");
  const Batch batch{codes, norms, live, ties, query_sq_norms, k, static_cast<Metric>(metric)};
  batch.check(nq, n_bytes);
  if (!nibble_fits(n_bytes)) throw std::invalid_argument("codes too wide for nibble sums");
  if (blocked.shape(0) !=
      static_cast<std::size_t>(fastscan::blocked_size(batch.rows(), n_bytes)))
    throw std::invalid_argument("the blocked codes do not match the codes");
  const NibbleAccumulate accumulate = accumulate_for(path);
  std::vector<std::vector<Candidate>> best(nq);
  {
    nb::gil_scoped_release release;
    for (std::ptrdiff_t q = 0; q < nq; ++q) {
      TopK top(k);
      nibble_scan(batch.scan(tables.data() + q * n_bytes * 256, n_bytes, q),
                  nibble_tables.data() + q * 2 * n_bytes * 16, blocked.data(), batch.rows(),
                  accumulate, static_cast<std::size_t>(std::max(1, threads)), top, k);
      best[q] = top.sorted();
    }
  }
  return results(std::move(best), k);
}

nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>> block_codes(Rows codes, std::ptrdiff_t n_bytes) {
  if (codes.stride(1) != 1 || codes.shape(1) < static_cast<std::size_t>(n_bytes))
    throw std::invalid_argument("codes must be (n, >= P) uint8 with contiguous rows");
  const std::ptrdiff_t n = codes.shape(0);
  const std::size_t size = fastscan::blocked_size(n, n_bytes);
  auto* out = new uint8_t[size];
  {
    nb::gil_scoped_release release;
    fastscan::block_codes(codes.data(), n, codes.stride(0), n_bytes, out);
  }
  nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<uint8_t*>(p); });
  return nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>(out, {size}, owner);
}

}  // namespace

NB_MODULE(_scan, m) {
  m.doc() = "vecstore's compiled CPU scan kernels.";
  m.def("available_paths", &available_paths,
        "The compiled scan paths this CPU can run, fastest first.");
  m.def("lut_topk", &lut_topk, nb::arg("tables"), nb::arg("codes"), nb::arg("norms"),
        nb::arg("live").none(), nb::arg("ties"), nb::arg("k"), nb::arg("metric"),
        nb::arg("query_sq_norms"), nb::arg("threads"),
        "Per query, the k best rows of byte-table codes: keys (nq, k) float32 ascending, "
        "rows and ties (nq, k) int64 (-1 rows and +inf keys where fewer rows are live).");
  m.def("nibble_topk", &nibble_topk, nb::arg("nibble_tables"), nb::arg("blocked"),
        nb::arg("tables"), nb::arg("codes"), nb::arg("norms"), nb::arg("live").none(),
        nb::arg("ties"), nb::arg("k"), nb::arg("metric"), nb::arg("query_sq_norms"),
        nb::arg("path"), nb::arg("threads"),
        "lut_topk's exact result through a FastScan pass over the blocked codes.");
  m.def("block_codes", &block_codes, nb::arg("codes"), nb::arg("n_bytes"),
        "The first n_bytes of each row in FastScan's blocked layout, (blocked_size,) uint8.");
}
