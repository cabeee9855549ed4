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
#include <vector>

#include "encode.h"
#include "fastscan.h"
#include "parallel.h"
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

// The FastScan kernel of a path for queries with (or without) nibble tables, or nullptr
// where the scan scores every row exactly.
fastscan::Accumulate accumulate_for(const std::string& path, bool nibbles) {
  const std::vector<std::string> paths = available_paths();
  if (std::find(paths.begin(), paths.end(), path) == paths.end())
    throw std::invalid_argument("this CPU or build has no " + path + " scan path");
#if defined(VECSTORE_X86)
  if (nibbles && path == "avx512") return fastscan::avx512::accumulate;
  if (nibbles && path == "avx2") return fastscan::avx2::accumulate;
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

// The Values of a stored format (fastscan.h), checked against n_bytes code bytes.
fastscan::Values values_of(int bits, std::ptrdiff_t count, std::ptrdiff_t head,
                           std::ptrdiff_t tail_from, std::ptrdiff_t n_bytes) {
  if (bits < 0 || bits > 8 || count < 0 || head < 0 || head > n_bytes || tail_from < 0)
    throw std::invalid_argument("values need bits in 0..8 and 0 <= head <= n_bytes");
  if (bits != 0) {
    const int width = fastscan::value_width(bits);
    if (count * width > 8 * head)
      throw std::invalid_argument("the values do not fit the head of the code bytes");
  }
  return fastscan::Values{bits, count, head, tail_from};
}

// Stored bytes a row must hold for its code bytes.
std::ptrdiff_t stored_bytes(const fastscan::Values& values, std::ptrdiff_t n_bytes) {
  if (values.bits == 0) return n_bytes;
  const std::ptrdiff_t packed = (values.count * values.bits + 7) / 8;
  return std::max(packed, values.tail_from + n_bytes - values.head);
}

void check_codes(const Rows& codes, std::ptrdiff_t n_bytes) {
  if (codes.stride(1) != 1 || codes.shape(1) < static_cast<std::size_t>(n_bytes))
    throw std::invalid_argument("codes must be (n, >= n_bytes) uint8 with contiguous rows");
}

// The parts of a search, checked and held once: a search of an unchanged snapshot scans
// the same PartSet again without converting its arrays. Stored rows give n_bytes code
// bytes as `values` say; with tail scales, the code bytes split at `split` (fastscan.h,
// scan.h). With `lay_out`, parts given without blocked layouts get them, kept with the
// set.
class PartSet {
 public:
  PartSet(std::ptrdiff_t n_bytes, std::tuple<int, std::ptrdiff_t, std::ptrdiff_t, std::ptrdiff_t> values,
          std::ptrdiff_t split, std::vector<Blocked> blocked, std::vector<Blocked> blocked_tails,
          std::vector<Rows> codes, std::vector<Floats> scales, std::vector<std::optional<Floats>> tail_scales,
          std::vector<Floats> norms, std::vector<Live> live,
          std::vector<Array<const int64_t, nb::ndim<1>>> ties, std::vector<RowMap> row_maps,
          std::vector<int64_t> offsets, bool lay_out)
      : n_bytes_(n_bytes), split_(split) {
    const std::size_t n_parts = codes.size();
    if (n_bytes < 1) throw std::invalid_argument("n_bytes must be positive");
    values_ = values_of(std::get<0>(values), std::get<1>(values), std::get<2>(values),
                        std::get<3>(values), n_bytes);
    const bool splits = split < n_bytes;
    if (split < 1 || split > n_bytes || (splits && values_.bits != 0 && split != values_.head))
      throw std::invalid_argument("split must be in 1..n_bytes, at the head of packed values");
    if (blocked.size() != n_parts || blocked_tails.size() != n_parts ||
        scales.size() != n_parts || tail_scales.size() != n_parts || norms.size() != n_parts ||
        live.size() != n_parts || ties.size() != n_parts || row_maps.size() != n_parts ||
        offsets.size() != n_parts)
      throw std::invalid_argument("every part needs codes, scales, norms, live, ties, rows");
    const std::ptrdiff_t tail = n_bytes - split;
    for (std::size_t i = 0; i < n_parts; ++i) {
      check_codes(codes[i], stored_bytes(values_, n_bytes));
      const std::size_t n = codes[i].shape(0);
      if (scales[i].shape(0) != n || norms[i].shape(0) != n || ties[i].shape(0) != n ||
          (live[i] && live[i]->shape(0) != n) || (row_maps[i] && row_maps[i]->shape(0) != n) ||
          (tail_scales[i] && tail_scales[i]->shape(0) != n))
        throw std::invalid_argument(
            "scales, norms, live, ties and row maps must match the codes");
      if (splits != tail_scales[i].has_value())
        throw std::invalid_argument("codes split into a head and a tail need tail scales");
      const auto rows = static_cast<std::ptrdiff_t>(n);
      if ((blocked[i] && blocked[i]->shape(0) !=
                             static_cast<std::size_t>(fastscan::blocked_size(rows, split))) ||
          (blocked_tails[i] && (!splits || blocked_tails[i]->shape(0) !=
                                static_cast<std::size_t>(fastscan::blocked_size(rows, tail)))))
        throw std::invalid_argument("blocked codes do not match their part's codes");
      parts_.push_back(Part{codes[i].data(), codes[i].stride(0), rows, scales[i].data(),
                            norms[i].data(),
                            live[i] ? reinterpret_cast<const uint8_t*>(live[i]->data())
                                    : nullptr,
                            ties[i].data(), blocked[i] ? blocked[i]->data() : nullptr,
                            row_maps[i] ? row_maps[i]->data() : nullptr, offsets[i],
                            tail_scales[i] ? tail_scales[i]->data() : nullptr,
                            blocked_tails[i] ? blocked_tails[i]->data() : nullptr});
      rows_ += rows;
    }
    blocked_ = std::move(blocked);
    blocked_tails_ = std::move(blocked_tails);
    codes_ = std::move(codes);
    scales_ = std::move(scales);
    tail_scales_ = std::move(tail_scales);
    norms_ = std::move(norms);
    live_ = std::move(live);
    ties_ = std::move(ties);
    row_maps_ = std::move(row_maps);
    if (lay_out) {
      nb::gil_scoped_release release;
      const std::ptrdiff_t tail_from = values_.bits != 0 ? values_.tail_from : split;
      for (Part& part : parts_) {
        if (part.blocked == nullptr) {
          layouts_.emplace_back(static_cast<std::size_t>(fastscan::blocked_size(part.rows, split)));
          fastscan::block_codes(part.codes, part.rows, part.stride, split, values_,
                                layouts_.back().data());
          part.blocked = layouts_.back().data();
        }
        if (splits && part.blocked_tail == nullptr) {
          layouts_.emplace_back(static_cast<std::size_t>(fastscan::blocked_size(part.rows, tail)));
          fastscan::block_codes(part.codes + tail_from, part.rows, part.stride, tail,
                                fastscan::Values{}, layouts_.back().data());
          part.blocked_tail = layouts_.back().data();
        }
      }
    }
  }

  std::ptrdiff_t n_bytes() const { return n_bytes_; }
  std::ptrdiff_t split() const { return split_; }
  const fastscan::Values& values() const { return values_; }
  std::ptrdiff_t rows() const { return rows_; }
  std::size_t size() const { return parts_.size(); }
  bool laid_out() const {
    return std::all_of(parts_.begin(), parts_.end(), [this](const Part& p) {
      return p.blocked != nullptr && (split_ == n_bytes_ || p.blocked_tail != nullptr);
    });
  }
  const std::vector<Part>& parts() const { return parts_; }

 private:
  std::ptrdiff_t n_bytes_, split_;
  fastscan::Values values_;
  std::ptrdiff_t rows_ = 0;
  std::vector<Part> parts_;
  std::vector<std::vector<uint8_t>> layouts_;
  // The arrays the parts point into, held while the set lives.
  std::vector<Blocked> blocked_, blocked_tails_;
  std::vector<Rows> codes_;
  std::vector<Floats> scales_, norms_;
  std::vector<std::optional<Floats>> tail_scales_;
  std::vector<Live> live_;
  std::vector<Array<const int64_t, nb::ndim<1>>> ties_;
  std::vector<RowMap> row_maps_;
};

// Per query, the k best rows of a PartSet: keys (nq, k) float32 ascending, rows (numbered
// by each part's row map or offset) and ties (nq, k) int64. With nibble tables on a SIMD
// path the parts take the FastScan pass (they must all be laid out): on avx512 and avx2
// with the codes' shared levels (16,) float32 the level-dot kernel (7-bit levels on
// avx2), else the table kernel. Byte tables with shared levels (256,) take the byte
// level-dot kernel on avx512. Otherwise
// every row is scored exactly. Scores add the query offsets (nq,) float32 where given.
// Every key is the exact one.
nb::tuple scan_topk(const PartSet& set, Tables nibble_tables, Tables byte_tables,
                    std::optional<Floats> levels, std::size_t k, int metric,
                    Floats query_sq_norms, std::optional<Floats> query_offsets,
                    const std::string& path, int threads) {
  const std::ptrdiff_t n_bytes = set.n_bytes();
  if (!nibble_tables && !byte_tables) throw std::invalid_argument("a scan needs tables");
  const std::size_t nq = nibble_tables ? nibble_tables->shape(0) : byte_tables->shape(0);
  if (nibble_tables && (nibble_tables->shape(1) != static_cast<std::size_t>(2 * n_bytes) ||
                        nibble_tables->shape(2) != 16))
    throw std::invalid_argument("nibble tables must be (nq, 2 * n_bytes, 16)");
  if (!nibble_tables && (byte_tables->shape(1) != static_cast<std::size_t>(n_bytes) ||
                         byte_tables->shape(2) != 256))
    throw std::invalid_argument("byte tables must be (nq, n_bytes, 256)");
  if (query_sq_norms.shape(0) != nq || (query_offsets && query_offsets->shape(0) != nq))
    throw std::invalid_argument("one query norm and offset a query");
  if (k == 0) throw std::invalid_argument("k must be positive");
  if (levels && levels->shape(0) != (nibble_tables ? 16u : 256u))
    throw std::invalid_argument("levels are (16,) with nibble tables, (256,) with byte tables");
  Kernel kernel{accumulate_for(path, nibble_tables.has_value()), nullptr, nullptr};
#if defined(VECSTORE_X86)
  // Byte tables have no table kernel, so codes split into a tail scan exactly.
  if (levels && path == "avx512" && (nibble_tables || set.split() == n_bytes)) {
    kernel.level_accumulate = nibble_tables ? fastscan::avx512::level_accumulate
                                            : fastscan::avx512::byte_level_accumulate;
    kernel.levels = levels->data();
  }
  // On avx2 only nibble codes have a level-dot kernel, with levels below 128.
  if (levels && path == "avx2" && nibble_tables) {
    kernel.level_accumulate = fastscan::avx2::level_accumulate;
    kernel.levels = levels->data();
    kernel.level_range = 63;
  }
#endif
  if ((kernel.accumulate != nullptr || kernel.level_accumulate != nullptr) && !set.laid_out())
    throw std::invalid_argument("the FastScan pass needs every part laid out");
  std::vector<Query> queries(nq);
  for (std::size_t q = 0; q < nq; ++q) {
    queries[q].nibbles = nibble_tables ? nibble_tables->data() + q * 2 * n_bytes * 16 : nullptr;
    queries[q].bytes = nibble_tables ? nullptr : byte_tables->data() + q * n_bytes * 256;
    queries[q].sq_norm = query_sq_norms.data()[q];
    queries[q].offset = query_offsets ? query_offsets->data()[q] : 0.0f;
  }
  std::vector<std::vector<Candidate>> best;
  {
    nb::gil_scoped_release release;
    const Search search{set.parts(), n_bytes, set.values(), set.split(),
                        static_cast<Metric>(metric), k};
    best = search_topk(search, queries, kernel, workers_for(threads, set.rows()));
  }
  return results(std::move(best), k);
}

// TurboQuant's nibble tables, (nq, 2 * n_bytes, 16) float32, of rotated queries (nq, D)
// float32 and the codebook levels (2^bits,) float32 for bits dividing 4: entry [p][v] adds,
// in slot order and in float32, coordinate (4 / bits) * p + s times the level of slot s
// of v (coordinates past D are zero), exactly as codecs.tables.value_tables in numpy.
nb::ndarray<nb::numpy, float, nb::ndim<3>> nibble_tables(Array<const float, nb::ndim<2>> rotated,
                                                         Floats levels, int bits,
                                                         std::ptrdiff_t n_bytes) {
  if (bits != 1 && bits != 2 && bits != 4) throw std::invalid_argument("bits must divide 4");
  if (levels.shape(0) != static_cast<std::size_t>(1 << bits))
    throw std::invalid_argument("levels must hold 2^bits values");
  const std::ptrdiff_t nq = rotated.shape(0), dim = rotated.shape(1);
  const int per_nibble = 4 / bits, mask = (1 << bits) - 1;
  const std::ptrdiff_t positions = 2 * n_bytes;
  if (n_bytes < 1 || dim > positions * per_nibble)
    throw std::invalid_argument("the queries have more coordinates than the codes");
  auto* out = new float[static_cast<std::size_t>(nq * positions * 16)];
  // The level each slot of a nibble value stands for: slot_levels[slot][v].
  float slot_levels[4][16];
  for (int slot = 0; slot < per_nibble; ++slot)
    for (int v = 0; v < 16; ++v) slot_levels[slot][v] = levels.data()[(v >> (slot * bits)) & mask];
  const float* q = rotated.data();
  for (std::ptrdiff_t i = 0; i < nq; ++i) {
    for (std::ptrdiff_t p = 0; p < positions; ++p) {
      float* entries = out + (i * positions + p) * 16;
      for (int slot = 0; slot < per_nibble; ++slot) {
        const std::ptrdiff_t j = p * per_nibble + slot;
        const float coordinate = j < dim ? q[i * dim + j] : 0.0f;
        for (int v = 0; v < 16; ++v) {
          const float product = coordinate * slot_levels[slot][v];
          entries[v] = slot == 0 ? product : entries[v] + product;
        }
      }
    }
  }
  nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  return nb::ndarray<nb::numpy, float, nb::ndim<3>>(
      out, {static_cast<std::size_t>(nq), static_cast<std::size_t>(positions), 16}, owner);
}

// Runs work(begin, end) over rows [0, n) split across up to `threads` threads (one per
// 1,024 rows at least).
template <typename Work>
void over_rows(std::ptrdiff_t n, int threads, const Work& work) {
  const std::ptrdiff_t workers =
      std::max<std::ptrdiff_t>(1, std::min<std::ptrdiff_t>(threads, (n + 1023) / 1024));
  const std::ptrdiff_t per = (n + workers - 1) / workers;
  in_parallel(static_cast<std::size_t>(workers), [&](std::size_t w) {
    const std::ptrdiff_t begin = std::min(n, static_cast<std::ptrdiff_t>(w) * per);
    work(begin, std::min(n, begin + per));
  });
}

// Norms (n,) float32 and unit rows (n, d) float32 of x (n, d) float32 (encode.h).
nb::tuple normalize_rows(Array<const float, nb::ndim<2>> x, int threads) {
  const std::ptrdiff_t n = x.shape(0), d = x.shape(1);
  auto* norms = new float[static_cast<std::size_t>(n)];
  auto* unit = new float[static_cast<std::size_t>(n * d)];
  {
    nb::gil_scoped_release release;
    over_rows(n, threads, [&](std::ptrdiff_t begin, std::ptrdiff_t end) {
      encode::normalize(x.data(), d, begin, end, norms, unit);
    });
  }
  nb::capsule own_norms(norms, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  nb::capsule own_unit(unit, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  const std::size_t unit_shape[2] = {static_cast<std::size_t>(n), static_cast<std::size_t>(d)};
  return nb::make_tuple(Array<float>(norms, 1, unit_shape, own_norms),
                        Array<float>(unit, 2, unit_shape, own_unit));
}

// Writes the packed nearest-centroid indices of rotated rows into the first bytes of each
// row of codes (encode.h).
void quantize_pack(Array<const float, nb::ndim<2>> rotated, Array<const float, nb::ndim<2>> unit,
                   Array<const double, nb::ndim<2>> matrix, Floats boundaries, int bits,
                   float margin, nb::ndarray<uint8_t, nb::numpy, nb::ndim<2>, nb::device::cpu> codes,
                   int threads) {
  const std::ptrdiff_t n = rotated.shape(0), dim_out = rotated.shape(1), d = unit.shape(1);
  if (bits < 1 || bits > 8 || boundaries.shape(0) != static_cast<std::size_t>((1 << bits) - 1))
    throw std::invalid_argument("boundaries must hold 2^bits - 1 values, bits in 1..8");
  if (unit.shape(0) != static_cast<std::size_t>(n) ||
      matrix.shape(0) != static_cast<std::size_t>(dim_out) ||
      matrix.shape(1) != static_cast<std::size_t>(d) || codes.shape(0) != static_cast<std::size_t>(n) ||
      codes.stride(1) != 1 ||
      codes.shape(1) < static_cast<std::size_t>((dim_out * bits + 7) / 8))
    throw std::invalid_argument("rotated (n, D), unit (n, d), matrix (D, d), codes (n, >= packed)");
  nb::gil_scoped_release release;
  over_rows(n, threads, [&](std::ptrdiff_t begin, std::ptrdiff_t end) {
    encode::quantize_pack(rotated.data(), unit.data(), matrix.data(), d, dim_out,
                          boundaries.data(), static_cast<int>(boundaries.shape(0)), bits, margin,
                          begin, end, codes.data(), codes.stride(0));
  });
}

std::ptrdiff_t blocked_size(std::ptrdiff_t n, std::ptrdiff_t n_bytes) {
  if (n < 0 || n_bytes < 1) throw std::invalid_argument("blocked_size needs n >= 0, n_bytes >= 1");
  return fastscan::blocked_size(n, n_bytes);
}

void block_codes(Rows codes, std::ptrdiff_t n_bytes,
                 std::tuple<int, std::ptrdiff_t, std::ptrdiff_t, std::ptrdiff_t> values,
                 Array<uint8_t, nb::ndim<1>> out) {
  const fastscan::Values v = values_of(std::get<0>(values), std::get<1>(values),
                                       std::get<2>(values), std::get<3>(values), n_bytes);
  check_codes(codes, stored_bytes(v, n_bytes));
  const std::ptrdiff_t n = static_cast<std::ptrdiff_t>(codes.shape(0));
  if (out.shape(0) != static_cast<std::size_t>(fastscan::blocked_size(n, n_bytes)))
    throw std::invalid_argument("out must hold blocked_size(n, n_bytes) bytes");
  nb::gil_scoped_release release;
  fastscan::block_codes(codes.data(), n, codes.stride(0), n_bytes, v, out.data());
}

}  // namespace

NB_MODULE(_scan, m) {
  m.doc() = "vecstore's compiled CPU scan kernels.";
  m.def("available_paths", &available_paths,
        "The compiled scan paths this CPU can run, fastest first.");
  nb::class_<PartSet>(m, "PartSet",
                      "The parts of a search, checked and held for any number of scans.")
      .def(nb::init<std::ptrdiff_t, std::tuple<int, std::ptrdiff_t, std::ptrdiff_t, std::ptrdiff_t>,
                    std::ptrdiff_t, std::vector<Blocked>, std::vector<Blocked>, std::vector<Rows>,
                    std::vector<Floats>, std::vector<std::optional<Floats>>, std::vector<Floats>,
                    std::vector<Live>, std::vector<Array<const int64_t, nb::ndim<1>>>,
                    std::vector<RowMap>, std::vector<int64_t>, bool>(),
           nb::arg("n_bytes"), nb::arg("values"), nb::arg("split"), nb::arg("blocked"),
           nb::arg("blocked_tails"), nb::arg("codes"), nb::arg("scales"),
           nb::arg("tail_scales"), nb::arg("norms"), nb::arg("live"), nb::arg("ties"),
           nb::arg("row_maps"), nb::arg("offsets"), nb::arg("lay_out"))
      .def_prop_ro("rows", &PartSet::rows)
      .def("__len__", &PartSet::size);
  m.def("scan_topk", &scan_topk, nb::arg("parts"), nb::arg("nibble_tables").none(),
        nb::arg("byte_tables").none(), nb::arg("levels").none(), nb::arg("k"), nb::arg("metric"),
        nb::arg("query_sq_norms"), nb::arg("query_offsets").none(), nb::arg("path"),
        nb::arg("threads"),
        "Per query, the exact k best rows of a PartSet: keys (nq, k) float32 ascending, "
        "rows and ties (nq, k) int64 (-1 rows, +inf keys past the live rows).");
  m.def("nibble_tables", &nibble_tables, nb::arg("rotated"), nb::arg("levels"),
        nb::arg("bits"), nb::arg("n_bytes"),
        "TurboQuant's nibble tables (nq, 2 * n_bytes, 16) float32, as numpy builds them.");
  m.def("normalize_rows", &normalize_rows, nb::arg("x"), nb::arg("threads"),
        "Norms (n,) float32 (float64 sums, rounded once) and unit rows (n, d) float32.");
  m.def("quantize_pack", &quantize_pack, nb::arg("rotated"), nb::arg("unit"),
        nb::arg("matrix"), nb::arg("boundaries"), nb::arg("bits"), nb::arg("margin"),
        nb::arg("codes"), nb::arg("threads"),
        "Packs the nearest-centroid indices of rotated rows into the first bytes of codes, "
        "coordinates near a boundary computed again in float64.");
  m.def("blocked_size", &blocked_size, nb::arg("n"), nb::arg("n_bytes"),
        "Bytes of FastScan's blocked layout of n rows of n_bytes code bytes.");
  m.def("block_codes", &block_codes, nb::arg("codes"), nb::arg("n_bytes"), nb::arg("values"),
        nb::arg("out"),
        "Writes the n_bytes code bytes of each row of codes (as values (bits, count, head, "
        "tail_from) say) in FastScan's blocked layout to out.");
}
