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
  Array<const float, nb::ndim<1>> scales;
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
    if (scales.shape(0) != n || norms.shape(0) != n || ties.shape(0) != n ||
        (live && live->shape(0) != n) ||
        query_sq_norms.shape(0) != static_cast<std::size_t>(nq))
      throw std::invalid_argument(
          "scales, norms, live, ties and query norms must match the codes");
    if (k == 0) throw std::invalid_argument("k must be positive");
  }

  LutScan scan(const float* tables, std::ptrdiff_t n_bytes, std::ptrdiff_t q) const {
    return LutScan{tables,       codes.data(), codes.stride(0), n_bytes,
                   scales.data(), norms.data(),
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

std::size_t workers_for(int threads, std::ptrdiff_t n) {
  return static_cast<std::size_t>(
      std::max<std::ptrdiff_t>(1, std::min<std::ptrdiff_t>(threads, (n + 4095) / 4096)));
}

using Blocked = std::optional<Array<const uint8_t, nb::ndim<1>>>;
using RowMap = std::optional<Array<const int64_t, nb::ndim<1>>>;

// Per query, the k best rows over several parts (one list entry each): keys (nq, k)
// float32 ascending, rows (numbered by each part's row map or offset) and ties (nq, k)
// int64. Parts with a blocked layout take the FastScan pass on `path`, the others the
// exact scan; every key is the exact one.
nb::tuple scan_topk(std::optional<Array<const float, nb::ndim<3>>> nibble_tables,
                    Array<const float, nb::ndim<3>> tables, std::vector<Blocked> blocked,
                    std::vector<Rows> codes, std::vector<Array<const float, nb::ndim<1>>> scales,
                    std::vector<Array<const float, nb::ndim<1>>> norms,
                    std::vector<Live> live, std::vector<Array<const int64_t, nb::ndim<1>>> ties,
                    std::vector<RowMap> row_maps, std::vector<int64_t> offsets, std::size_t k,
                    int metric, Array<const float, nb::ndim<1>> query_sq_norms,
                    const std::string& path, int threads) {
  const std::ptrdiff_t nq = tables.shape(0), n_bytes = tables.shape(1);
  const std::size_t n_parts = codes.size();
  if (tables.shape(2) != 256) throw std::invalid_argument("tables must be (nq, P, 256)");
  if (blocked.size() != n_parts || scales.size() != n_parts || norms.size() != n_parts ||
      live.size() != n_parts ||
      ties.size() != n_parts || row_maps.size() != n_parts || offsets.size() != n_parts)
    throw std::invalid_argument("every part needs codes, scales, norms, live, ties, rows");
  const bool any_blocked =
      std::any_of(blocked.begin(), blocked.end(), [](const Blocked& b) { return b.has_value(); });
  if (any_blocked && (!nibble_tables || nibble_tables->shape(0) != static_cast<std::size_t>(nq) ||
                      nibble_tables->shape(1) != static_cast<std::size_t>(2 * n_bytes) ||
                      nibble_tables->shape(2) != 16 || !nibble_fits(n_bytes)))
    throw std::invalid_argument("blocked parts need nibble tables (nq, 2P, 16), P < 16384");
  std::ptrdiff_t total = 0;
  for (std::size_t i = 0; i < n_parts; ++i) {
    const Batch part{codes[i], scales[i], norms[i], live[i], ties[i], query_sq_norms, k,
                     static_cast<Metric>(metric)};
    part.check(nq, n_bytes);
    if (blocked[i] && blocked[i]->shape(0) != static_cast<std::size_t>(
                          fastscan::blocked_size(part.rows(), n_bytes)))
      throw std::invalid_argument("blocked codes do not match their part's codes");
    if (row_maps[i] && row_maps[i]->shape(0) != codes[i].shape(0))
      throw std::invalid_argument("a row map needs one entry per row");
    total += part.rows();
  }
  const NibbleAccumulate accumulate = accumulate_for(any_blocked ? path : "scalar");
  std::vector<std::vector<Candidate>> best(nq);
  {
    nb::gil_scoped_release release;
    const std::size_t workers = workers_for(threads, total);
    for (std::ptrdiff_t q = 0; q < nq; ++q) {
      std::vector<ScanPart> parts;
      for (std::size_t i = 0; i < n_parts; ++i) {
        const Batch part{codes[i], scales[i], norms[i], live[i], ties[i], query_sq_norms, k,
                         static_cast<Metric>(metric)};
        parts.push_back(ScanPart{part.scan(tables.data() + q * n_bytes * 256, n_bytes, q),
                                 part.rows(), blocked[i] ? blocked[i]->data() : nullptr,
                                 row_maps[i] ? row_maps[i]->data() : nullptr, offsets[i]});
      }
      best[q] = scan_parts(parts, any_blocked ? nibble_tables->data() + q * 2 * n_bytes * 16
                                              : nullptr,
                           accumulate, workers, k);
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
  m.def("scan_topk", &scan_topk, nb::arg("nibble_tables").none(), nb::arg("tables"),
        nb::arg("blocked"), nb::arg("codes"), nb::arg("scales"), nb::arg("norms"),
        nb::arg("live"),
        nb::arg("ties"), nb::arg("row_maps"), nb::arg("offsets"), nb::arg("k"),
        nb::arg("metric"), nb::arg("query_sq_norms"), nb::arg("path"), nb::arg("threads"),
        "Per query, the exact k best rows over several parts: keys (nq, k) float32 "
        "ascending, rows and ties (nq, k) int64 (-1 rows, +inf keys past the live rows).");
  m.def("block_codes", &block_codes, nb::arg("codes"), nb::arg("n_bytes"),
        "The first n_bytes of each row in FastScan's blocked layout, (blocked_size,) uint8.");
}
