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

#include "scan.h"

namespace nb = nanobind;
using namespace vecstore;

namespace {

using Kernel = void (*)(const LutScan&, std::ptrdiff_t, std::ptrdiff_t, TopK&);

// The compiled paths this CPU can run, fastest first.
std::vector<std::string> available_paths() { return {"scalar"}; }

Kernel kernel_for(const std::string& path) {
  if (path == "scalar") return scalar::lut_scan;
  throw std::invalid_argument("this build has no " + path + " scan path");
}

template <typename T, typename... Shape>
using Array = nb::ndarray<T, nb::numpy, nb::c_contig, nb::device::cpu, Shape...>;
using Rows = nb::ndarray<const uint8_t, nb::numpy, nb::ndim<2>, nb::device::cpu>;

// Per query: the k best (key, tie, row) of rows [0, n), rows split across threads.
nb::tuple lut_topk(Array<const float, nb::ndim<3>> tables, Rows codes,
                   Array<const float, nb::ndim<1>> norms,
                   std::optional<Array<const bool, nb::ndim<1>>> live,
                   Array<const int64_t, nb::ndim<1>> ties, std::size_t k, int metric,
                   Array<const float, nb::ndim<1>> query_sq_norms, const std::string& path,
                   int threads) {
  const std::ptrdiff_t nq = tables.shape(0), n_bytes = tables.shape(1);
  const std::ptrdiff_t n = codes.shape(0);
  if (tables.shape(2) != 256) throw std::invalid_argument("tables must be (nq, P, 256)");
  if (codes.stride(1) != 1 || codes.shape(1) < static_cast<std::size_t>(n_bytes))
    throw std::invalid_argument("codes must be (n, >= P) uint8 with contiguous rows");
  if (norms.shape(0) != static_cast<std::size_t>(n) ||
      ties.shape(0) != static_cast<std::size_t>(n) ||
      (live && live->shape(0) != static_cast<std::size_t>(n)) ||
      query_sq_norms.shape(0) != static_cast<std::size_t>(nq))
    throw std::invalid_argument("norms, live, ties and query norms must match the codes");
  if (k == 0) throw std::invalid_argument("k must be positive");
  const Kernel kernel = kernel_for(path);
  const std::ptrdiff_t stride = codes.stride(0);
  const std::size_t workers = static_cast<std::size_t>(
      std::max<std::ptrdiff_t>(1, std::min<std::ptrdiff_t>(threads, (n + 4095) / 4096)));

  auto* keys = new float[nq * k];
  auto* rows = new int64_t[nq * k];
  auto* out_ties = new int64_t[nq * k];
  {
    nb::gil_scoped_release release;
    for (std::ptrdiff_t q = 0; q < nq; ++q) {
      LutScan scan{tables.data() + q * n_bytes * 256, codes.data(), stride, n_bytes,
                   norms.data(), live ? reinterpret_cast<const uint8_t*>(live->data()) : nullptr,
                   ties.data(), static_cast<Metric>(metric), query_sq_norms.data()[q]};
      std::vector<TopK> tops(workers, TopK(k));
      std::vector<std::thread> pool;
      const std::ptrdiff_t per = (n + workers - 1) / workers;
      for (std::size_t w = 0; w < workers; ++w) {
        const std::ptrdiff_t begin = std::min<std::ptrdiff_t>(n, w * per);
        const std::ptrdiff_t end = std::min<std::ptrdiff_t>(n, begin + per);
        if (w + 1 == workers) {
          kernel(scan, begin, end, tops[w]);
        } else {
          pool.emplace_back([&, w, begin, end] { kernel(scan, begin, end, tops[w]); });
        }
      }
      for (auto& t : pool) t.join();
      TopK merged(k);
      for (auto& top : tops)
        for (const Candidate& c : top.sorted()) merged.push(c.key, c.tie, c.row);
      const std::vector<Candidate> best = merged.sorted();
      for (std::size_t i = 0; i < k; ++i) {
        const bool filled = i < best.size();
        keys[q * k + i] = filled ? best[i].key : std::numeric_limits<float>::infinity();
        rows[q * k + i] = filled ? best[i].row : -1;
        out_ties[q * k + i] = filled ? best[i].tie : std::numeric_limits<int64_t>::max();
      }
    }
  }
  const std::size_t shape[2] = {static_cast<std::size_t>(nq), k};
  nb::capsule own_keys(keys, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  nb::capsule own_rows(rows, [](void* p) noexcept { delete[] static_cast<int64_t*>(p); });
  nb::capsule own_ties(out_ties, [](void* p) noexcept { delete[] static_cast<int64_t*>(p); });
  return nb::make_tuple(Array<float>(keys, 2, shape, own_keys),
                        Array<int64_t>(rows, 2, shape, own_rows),
                        Array<int64_t>(out_ties, 2, shape, own_ties));
}

}  // namespace

NB_MODULE(_scan, m) {
  m.doc() = "vecstore's compiled CPU scan kernels.";
  m.def("available_paths", &available_paths,
        "The compiled scan paths this CPU can run, fastest first.");
  m.def("lut_topk", &lut_topk, nb::arg("tables"), nb::arg("codes"), nb::arg("norms"),
        nb::arg("live").none(), nb::arg("ties"), nb::arg("k"), nb::arg("metric"),
        nb::arg("query_sq_norms"), nb::arg("path"), nb::arg("threads"),
        "Per query, the k best rows of byte-table codes: keys (nq, k) float32 ascending, "
        "rows and ties (nq, k) int64 (-1 rows and +inf keys where fewer rows are live).");
}
