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

// The compiled paths this CPU can run, fastest first. The SIMD ones bound rows with the
// FastScan pass first; every path reports exact keys.
std::vector<std::string> available_paths() {
  std::vector<std::string> paths;
#if defined(VECSTORE_X86)
  if (fastscan::cpu_has_avx512()) paths.push_back("avx512");
  if (fastscan::cpu_has_avx2()) paths.push_back("avx2");
#endif
  paths.push_back("scalar");
  return paths;
}

// The FastScan kernel of a path, or nullptr where the path scores every row exactly.
fastscan::Accumulate accumulate_for(const std::string& path) {
  const std::vector<std::string> paths = available_paths();
  if (std::find(paths.begin(), paths.end(), path) == paths.end())
    throw std::invalid_argument("this CPU or build has no " + path + " scan path");
#if defined(VECSTORE_X86)
  if (path == "avx512") return fastscan::avx512::accumulate;
  if (path == "avx2") return fastscan::avx2::accumulate;
#endif
  return nullptr;
}

template <typename T, typename... Shape>
using Array = nb::ndarray<T, nb::numpy, nb::c_contig, nb::device::cpu, Shape...>;
using Rows = nb::ndarray<const uint8_t, nb::numpy, nb::ndim<2>, nb::device::cpu>;
using Floats = Array<const float, nb::ndim<1>>;
using Tables = std::optional<Array<const float, nb::ndim<3>>>;
using Live = std::optional<Array<const bool, nb::ndim<1>>>;
using Blocked = std::optional<Array<const uint8_t, nb::ndim<1>>>;
using RowMap = std::optional<Array<const int64_t, nb::ndim<1>>>;

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

// Threads for n rows: at most `threads`, and one per 16,384 rows.
std::size_t workers_for(int threads, std::ptrdiff_t n) {
  return static_cast<std::size_t>(
      std::max<std::ptrdiff_t>(1, std::min<std::ptrdiff_t>(threads, (n + 16383) / 16384)));
}

void check_codes(const Rows& codes, std::ptrdiff_t n_bytes) {
  if (codes.stride(1) != 1 || codes.shape(1) < static_cast<std::size_t>(n_bytes))
    throw std::invalid_argument("codes must be (n, >= n_bytes) uint8 with contiguous rows");
}

// Per query, the k best rows over several parts (one list entry each): keys (nq, k)
// float32 ascending, rows (numbered by each part's row map or offset) and ties (nq, k)
// int64. With nibble tables on a SIMD path every part takes the FastScan pass (parts
// without a blocked layout are laid out for this call); otherwise every row is scored
// exactly. Every key is the exact one.
nb::tuple scan_topk(Tables nibble_tables, Tables byte_tables, std::ptrdiff_t n_bytes,
                    std::vector<Blocked> blocked, std::vector<Rows> codes,
                    std::vector<Floats> scales, std::vector<Floats> norms,
                    std::vector<Live> live, std::vector<Array<const int64_t, nb::ndim<1>>> ties,
                    std::vector<RowMap> row_maps, std::vector<int64_t> offsets, std::size_t k,
                    int metric, Floats query_sq_norms, const std::string& path, int threads) {
  const std::size_t n_parts = codes.size();
  if (!nibble_tables && !byte_tables) throw std::invalid_argument("a scan needs tables");
  const std::size_t nq = nibble_tables ? nibble_tables->shape(0) : byte_tables->shape(0);
  if (nibble_tables && (nibble_tables->shape(1) != static_cast<std::size_t>(2 * n_bytes) ||
                        nibble_tables->shape(2) != 16))
    throw std::invalid_argument("nibble tables must be (nq, 2 * n_bytes, 16)");
  if (byte_tables && (byte_tables->shape(0) != nq ||
                      byte_tables->shape(1) != static_cast<std::size_t>(n_bytes) ||
                      byte_tables->shape(2) != 256))
    throw std::invalid_argument("byte tables must be (nq, n_bytes, 256)");
  if (query_sq_norms.shape(0) != nq) throw std::invalid_argument("one query norm a query");
  if (k == 0) throw std::invalid_argument("k must be positive");
  if (blocked.size() != n_parts || scales.size() != n_parts || norms.size() != n_parts ||
      live.size() != n_parts || ties.size() != n_parts || row_maps.size() != n_parts ||
      offsets.size() != n_parts)
    throw std::invalid_argument("every part needs codes, scales, norms, live, ties, rows");
  const fastscan::Accumulate accumulate = nibble_tables ? accumulate_for(path) : nullptr;
  if (!nibble_tables) accumulate_for(path);
  Search search{{}, n_bytes, static_cast<Metric>(metric), k};
  std::ptrdiff_t total = 0;
  for (std::size_t i = 0; i < n_parts; ++i) {
    check_codes(codes[i], n_bytes);
    const std::size_t n = codes[i].shape(0);
    if (scales[i].shape(0) != n || norms[i].shape(0) != n || ties[i].shape(0) != n ||
        (live[i] && live[i]->shape(0) != n) || (row_maps[i] && row_maps[i]->shape(0) != n))
      throw std::invalid_argument("scales, norms, live, ties and row maps must match the codes");
    if (blocked[i] && blocked[i]->shape(0) != static_cast<std::size_t>(
                          fastscan::blocked_size(static_cast<std::ptrdiff_t>(n), n_bytes)))
      throw std::invalid_argument("blocked codes do not match their part's codes");
    search.parts.push_back(Part{codes[i].data(), codes[i].stride(0),
                                static_cast<std::ptrdiff_t>(n), scales[i].data(),
                                norms[i].data(),
                                live[i] ? reinterpret_cast<const uint8_t*>(live[i]->data())
                                        : nullptr,
                                ties[i].data(), blocked[i] ? blocked[i]->data() : nullptr,
                                row_maps[i] ? row_maps[i]->data() : nullptr, offsets[i]});
    total += static_cast<std::ptrdiff_t>(n);
  }
  std::vector<Query> queries(nq);
  for (std::size_t q = 0; q < nq; ++q) {
    queries[q].nibbles = nibble_tables ? nibble_tables->data() + q * 2 * n_bytes * 16 : nullptr;
    queries[q].bytes =
        nibble_tables ? nullptr : byte_tables->data() + q * n_bytes * 256;
    queries[q].sq_norm = query_sq_norms.data()[q];
  }
  std::vector<std::vector<Candidate>> best;
  {
    nb::gil_scoped_release release;
    std::vector<std::vector<uint8_t>> layouts;
    if (accumulate != nullptr) {
      for (Part& part : search.parts) {
        if (part.blocked != nullptr) continue;
        layouts.emplace_back(static_cast<std::size_t>(fastscan::blocked_size(part.rows, n_bytes)));
        fastscan::block_codes(part.codes, part.rows, part.stride, n_bytes, layouts.back().data());
        part.blocked = layouts.back().data();
      }
    }
    best = search_topk(search, queries, accumulate, workers_for(threads, total));
  }
  return results(std::move(best), k);
}

std::ptrdiff_t blocked_size(std::ptrdiff_t n, std::ptrdiff_t n_bytes) {
  if (n < 0 || n_bytes < 1) throw std::invalid_argument("blocked_size needs n >= 0, n_bytes >= 1");
  return fastscan::blocked_size(n, n_bytes);
}

void block_codes(Rows codes, std::ptrdiff_t n_bytes, Array<uint8_t, nb::ndim<1>> out) {
  check_codes(codes, n_bytes);
  const std::ptrdiff_t n = static_cast<std::ptrdiff_t>(codes.shape(0));
  if (out.shape(0) != static_cast<std::size_t>(fastscan::blocked_size(n, n_bytes)))
    throw std::invalid_argument("out must hold blocked_size(n, n_bytes) bytes");
  nb::gil_scoped_release release;
  fastscan::block_codes(codes.data(), n, codes.stride(0), n_bytes, out.data());
}

}  // namespace

NB_MODULE(_scan, m) {
  m.doc() = "vecstore's compiled CPU scan kernels.";
  m.def("available_paths", &available_paths,
        "The compiled scan paths this CPU can run, fastest first.");
  m.def("scan_topk", &scan_topk, nb::arg("nibble_tables").none(),
        nb::arg("byte_tables").none(), nb::arg("n_bytes"), nb::arg("blocked"), nb::arg("codes"), nb::arg("scales"), nb::arg("norms"),
        nb::arg("live"),
        nb::arg("ties"), nb::arg("row_maps"), nb::arg("offsets"), nb::arg("k"),
        nb::arg("metric"), nb::arg("query_sq_norms"), nb::arg("path"), nb::arg("threads"),
        "Per query, the exact k best rows over several parts: keys (nq, k) float32 "
        "ascending, rows and ties (nq, k) int64 (-1 rows, +inf keys past the live rows).");
  m.def("blocked_size", &blocked_size, nb::arg("n"), nb::arg("n_bytes"),
        "Bytes of FastScan's blocked layout of n rows of n_bytes code bytes.");
  m.def("block_codes", &block_codes, nb::arg("codes"), nb::arg("n_bytes"), nb::arg("out"),
        "Writes the first n_bytes of each row of codes in FastScan's blocked layout to out.");
}
