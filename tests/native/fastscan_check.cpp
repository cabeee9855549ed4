// Checks and times the FastScan kernels of vecstore/_native/src/fastscan*.cpp.
//
// Build and run from the repository root:
//   S=vecstore/_native/src
//   g++ -O3 -std=c++17 -c -mavx2 -I$S $S/fastscan_avx2.cpp -o /tmp/fastscan_avx2.o
//   g++ -O3 -std=c++17 -c -mavx512f -mavx512bw -mavx512vl -mavx512vbmi -mavx512vnni -I$S $S/fastscan_avx512.cpp -o /tmp/fastscan_avx512.o
//   g++ -O3 -std=c++17 -I$S tests/native/fastscan_check.cpp $S/fastscan_scalar.cpp /tmp/fastscan_avx2.o /tmp/fastscan_avx512.o -o /tmp/fastscan_check
//   /tmp/fastscan_check [timing runs, default 20]
// The same with -O1 -g -fsanitize=address,undefined in the three g++ commands checks bounds.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <utility>
#include <vector>

#include "fastscan.h"

namespace fs = vecstore::fastscan;

namespace {

struct Path {
  const char* name;
  fs::Accumulate kernel;
  bool available;
};

// Row-major reference over the original (unblocked) codes, tables in kernel order.
std::vector<int32_t> naive(const std::vector<uint8_t>& codes, std::ptrdiff_t n,
                            std::ptrdiff_t stride, std::ptrdiff_t n_bytes,
                            const std::vector<uint8_t>& tables) {
  std::vector<int32_t> sums(static_cast<std::size_t>(n));
  for (std::ptrdiff_t r = 0; r < n; ++r) {
    int32_t s = 0;
    for (std::ptrdiff_t b = 0; b < n_bytes; ++b) {
      const uint8_t c = codes[static_cast<std::size_t>(r * stride + b)];
      const uint8_t* quad = tables.data() + (b / 4) * 128 + (b % 4) * 16;
      s += quad[c & 15] + quad[64 + (c >> 4)];
    }
    sums[static_cast<std::size_t>(r)] = s;
  }
  return sums;
}

// Runs kernel for nq copies of the queries' tables (query q's table entries shifted by q)
// on blocked (sized exactly, so a sanitizer build catches over-reads); each query's sums
// are followed by 8 guard entries that must stay untouched.
std::vector<std::vector<int32_t>> run(fs::Accumulate kernel, const std::vector<uint8_t>& blocked,
                                       std::ptrdiff_t n_blocks, std::ptrdiff_t n_quads,
                                       const std::vector<std::vector<uint8_t>>& tables) {
  const std::size_t n_sums = static_cast<std::size_t>(n_blocks * fs::kBlockRows);
  const int nq = static_cast<int>(tables.size());
  std::vector<std::vector<int32_t>> sums(tables.size(), std::vector<int32_t>(n_sums + 8, 0xBEEF));
  const uint8_t* t[fs::kMaxGroup];
  int32_t* s[fs::kMaxGroup];
  for (int q = 0; q < nq; ++q) {
    t[q] = tables[q].data();
    s[q] = sums[q].data();
  }
  kernel(blocked.data(), n_blocks, n_quads, t, nq, s);
  for (auto& one : sums) {
    if (!std::all_of(one.begin() + static_cast<std::ptrdiff_t>(n_sums), one.end(),
                     [](int32_t v) { return v == 0xBEEF; })) {
      std::printf("FAIL: write past the end of sums\n");
      std::exit(1);
    }
    one.resize(n_sums);
  }
  return sums;
}

// Checks one shape for 1 to 4 queries at once: every path against the naive loop (rows
// past n score as all-zero codes). Returns the number of failures.
int check_shape(const std::vector<Path>& paths, std::ptrdiff_t n, std::ptrdiff_t n_bytes,
                std::ptrdiff_t stride, bool max_tables, std::mt19937_64& rng) {
  std::vector<uint8_t> codes(static_cast<std::size_t>(n * stride));
  for (auto& c : codes) c = static_cast<uint8_t>(rng());
  const std::ptrdiff_t n_quads = fs::quad_count(n_bytes);
  // Random tables, or all 255 (the largest sums); padded positions hold zeros.
  std::vector<std::vector<uint8_t>> tables;
  for (int q = 0; q < fs::kMaxGroup; ++q) {
    std::vector<uint8_t> t(static_cast<std::size_t>(n_quads * 128), 0);
    for (std::ptrdiff_t b = 0; b < n_bytes; ++b)
      for (int h = 0; h < 2; ++h)
        for (int v = 0; v < 16; ++v)
          t[static_cast<std::size_t>((b / 4) * 128 + h * 64 + (b % 4) * 16 + v)] =
              max_tables ? 255 : static_cast<uint8_t>(rng());
    tables.push_back(t);
  }
  const std::ptrdiff_t n_blocks = fs::block_count(n);
  std::vector<uint8_t> blocked(static_cast<std::size_t>(fs::blocked_size(n, n_bytes)), 0xAA);
  fs::block_codes(codes.data(), n, stride, n_bytes, fs::Values{}, blocked.data());
  int failures = 0;
  for (int nq = 1; nq <= fs::kMaxGroup; ++nq) {
    const std::vector<std::vector<uint8_t>> group(tables.begin(), tables.begin() + nq);
    for (const Path& p : paths) {
      if (!p.available) continue;
      const auto got = run(p.kernel, blocked, n_blocks, n_quads, group);
      for (int q = 0; q < nq; ++q) {
        const std::vector<int32_t> want = naive(codes, n, stride, n_bytes, group[q]);
        const bool same = std::equal(want.begin(), want.end(), got[q].begin()) &&
                          std::all_of(got[q].begin() + n, got[q].end(), [&](int32_t v) {
                            return v == naive(std::vector<uint8_t>(n_bytes), 1, n_bytes,
                                              n_bytes, group[q])[0];
                          });
        if (!same) {
          std::printf("FAIL %s: n=%td n_bytes=%td stride=%td nq=%d q=%d tables=%s\n", p.name,
                      n, n_bytes, stride, nq, q, max_tables ? "max" : "random");
          ++failures;
        }
      }
    }
  }
  return failures;
}

// The level-dot kernels (nibbles and bytes) against their scalar references for 1 to
// kMaxGroup queries, random levels and weights, then the extremes (every level at its
// largest, weights of -128 and 127). The avx2 kernel takes levels of at most 127. Returns
// the number of failures.
int check_levels(std::ptrdiff_t n, std::ptrdiff_t n_bytes, std::mt19937_64& rng) {
  std::vector<uint8_t> codes(static_cast<std::size_t>(n * n_bytes));
  for (auto& c : codes) c = static_cast<uint8_t>(rng());
  const std::ptrdiff_t n_quads = fs::quad_count(n_bytes);
  const std::ptrdiff_t n_blocks = fs::block_count(n);
  std::vector<uint8_t> blocked(static_cast<std::size_t>(fs::blocked_size(n, n_bytes)));
  fs::block_codes(codes.data(), n, n_bytes, n_bytes, fs::Values{}, blocked.data());
  int failures = 0;
  for (const bool extremes : {false, true}) {
    uint8_t levels[256], small_levels[256];
    for (int v = 0; v < 256; ++v) {
      levels[v] = extremes ? 255 : static_cast<uint8_t>(rng());
      small_levels[v] = extremes ? 127 : levels[v] & 127;
    }
    std::vector<std::vector<int8_t>> weights(fs::kMaxGroup, std::vector<int8_t>(n_quads * 8));
    for (std::size_t q = 0; q < weights.size(); ++q)
      for (auto& x : weights[q])
        x = extremes ? static_cast<int8_t>(q % 2 ? 127 : -128) : static_cast<int8_t>(rng());
    for (int nq = 1; nq <= fs::kMaxGroup; ++nq) {
      std::vector<std::vector<int32_t>> want(nq, std::vector<int32_t>(n_blocks * fs::kBlockRows));
      std::vector<std::vector<int32_t>> got = want;
      const int8_t* w[fs::kMaxGroup];
      int32_t* a[fs::kMaxGroup];
      int32_t* b[fs::kMaxGroup];
      for (int q = 0; q < nq; ++q) {
        w[q] = weights[q].data();
        a[q] = want[q].data();
        b[q] = got[q].data();
      }
      if (fs::cpu_has_avx2()) {
        fs::scalar::level_accumulate(blocked.data(), n_blocks, n_quads, small_levels, w, nq, a);
        fs::avx2::level_accumulate(blocked.data(), n_blocks, n_quads, small_levels, w, nq, b);
        if (want != got) {
          std::printf("FAIL level-dot avx2: n=%td n_bytes=%td nq=%d\n", n, n_bytes, nq);
          ++failures;
        }
      }
      if (!fs::cpu_has_avx512()) continue;
      fs::scalar::level_accumulate(blocked.data(), n_blocks, n_quads, levels, w, nq, a);
      fs::avx512::level_accumulate(blocked.data(), n_blocks, n_quads, levels, w, nq, b);
      if (want != got) {
        std::printf("FAIL level-dot avx512: n=%td n_bytes=%td nq=%d\n", n, n_bytes, nq);
        ++failures;
      }
      fs::scalar::byte_level_accumulate(blocked.data(), n_blocks, n_quads, levels, w, nq, a);
      fs::avx512::byte_level_accumulate(blocked.data(), n_blocks, n_quads, levels, w, nq, b);
      if (want != got) {
        std::printf("FAIL byte level-dot avx512: n=%td n_bytes=%td nq=%d\n", n, n_bytes, nq);
        ++failures;
      }
    }
  }
  return failures;
}

// Min over reps runs of the avx2 level-dot kernel on n = 100000 rows of 192 bytes, for one
// query and for kMaxGroup (the time per query).
void time_levels(int reps, std::mt19937_64& rng) {
  if (!fs::cpu_has_avx2()) return;
  const std::ptrdiff_t n = 100000, n_bytes = 192, n_quads = n_bytes / 4;
  std::vector<uint8_t> codes(static_cast<std::size_t>(n * n_bytes));
  for (auto& c : codes) c = static_cast<uint8_t>(rng());
  const std::ptrdiff_t n_blocks = fs::block_count(n);
  std::vector<uint8_t> blocked(static_cast<std::size_t>(fs::blocked_size(n, n_bytes)));
  fs::block_codes(codes.data(), n, n_bytes, n_bytes, fs::Values{}, blocked.data());
  uint8_t levels[16];
  for (auto& l : levels) l = static_cast<uint8_t>(rng() & 127);
  std::vector<std::vector<int8_t>> weights(fs::kMaxGroup, std::vector<int8_t>(n_quads * 8));
  for (auto& w : weights)
    for (auto& x : w) x = static_cast<int8_t>(rng());
  std::vector<std::vector<int32_t>> sums(fs::kMaxGroup,
                                         std::vector<int32_t>(n_blocks * fs::kBlockRows));
  const int8_t* w[fs::kMaxGroup];
  int32_t* s[fs::kMaxGroup];
  for (int q = 0; q < fs::kMaxGroup; ++q) {
    w[q] = weights[q].data();
    s[q] = sums[q].data();
  }
  const std::pair<const char*, fs::LevelAccumulate> kernels[] = {
      {"avx2", fs::avx2::level_accumulate},
      {"avx512", fs::cpu_has_avx512() ? fs::avx512::level_accumulate : nullptr}};
  for (const auto& [name, kernel] : kernels) {
    if (kernel == nullptr) continue;
    for (const int nq : {1, 2, 4, static_cast<int>(fs::kMaxGroup)}) {
      double best = 1e30;
      for (int rep = 0; rep < reps; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        kernel(blocked.data(), n_blocks, n_quads, levels, w, nq, s);
        const auto t1 = std::chrono::steady_clock::now();
        best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
      }
      std::printf("%s level-dot n=%td n_bytes=%td nq=%d: %.3f ms a query (min of %d), %.1f GB/s "
                  "of blocked codes\n", name, n, n_bytes, nq, best * 1e3 / nq, reps,
                  static_cast<double>(blocked.size()) * nq / best * 1e-9);
    }
  }
}

// Min over reps runs of each available path on n = 100000 rows of 192 bytes, for one query
// and for a group of kMaxGroup queries (the time per query).
void time_paths(const std::vector<Path>& paths, int reps, std::mt19937_64& rng) {
  const std::ptrdiff_t n = 100000, n_bytes = 192, n_quads = n_bytes / 4;
  std::vector<uint8_t> codes(static_cast<std::size_t>(n * n_bytes));
  for (auto& c : codes) c = static_cast<uint8_t>(rng());
  std::vector<std::vector<uint8_t>> tables(fs::kMaxGroup, std::vector<uint8_t>(n_quads * 128));
  for (auto& table : tables)
    for (auto& t : table) t = static_cast<uint8_t>(rng());
  const std::ptrdiff_t n_blocks = fs::block_count(n);
  std::vector<uint8_t> blocked(static_cast<std::size_t>(fs::blocked_size(n, n_bytes)));
  fs::block_codes(codes.data(), n, n_bytes, n_bytes, fs::Values{}, blocked.data());
  for (const Path& p : paths) {
    if (!p.available) {
      std::printf("%-7s not supported on this CPU\n", p.name);
      continue;
    }
    for (const int nq : {1, static_cast<int>(fs::kMaxGroup)}) {
      const std::vector<std::vector<uint8_t>> group(tables.begin(), tables.begin() + nq);
      double best = 1e30;
      for (int rep = 0; rep < reps; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        run(p.kernel, blocked, n_blocks, n_quads, group);
        const auto t1 = std::chrono::steady_clock::now();
        best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
      }
      std::printf("%-7s n=%td n_bytes=%td nq=%d: %.3f ms a query (min of %d), %.1f GB/s of "
                  "blocked codes\n", p.name, n, n_bytes, nq, best * 1e3 / nq, reps,
                  static_cast<double>(blocked.size()) * nq / best * 1e-9);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 20;
  const std::vector<Path> paths = {
      {"scalar", fs::scalar::accumulate, true},
      {"avx2", fs::avx2::accumulate, fs::cpu_has_avx2()},
      {"avx512", fs::avx512::accumulate, fs::cpu_has_avx512()},
  };
  for (const Path& p : paths) {
    if (!p.available) std::printf("%s: not supported on this CPU, not checked\n", p.name);
  }
  std::mt19937_64 rng(12345);
  int failures = 0;
  int shapes = 0;
  for (const std::ptrdiff_t n : {1, 31, 32, 33, 65, 1000, 20003}) {
    for (const std::ptrdiff_t n_bytes : {1, 2, 3, 4, 7, 25, 48, 192}) {
      for (const std::ptrdiff_t stride : {n_bytes, n_bytes + 4}) {
        for (const bool max_tables : {false, true}) {
          failures += check_shape(paths, n, n_bytes, stride, max_tables, rng);
          ++shapes;
        }
      }
    }
  }
  for (const std::ptrdiff_t n : {1, 33, 1000})
    for (const std::ptrdiff_t n_bytes : {1, 5, 48, 192}) failures += check_levels(n, n_bytes, rng);
  std::printf("%d shapes checked, %d failures\n", shapes, failures);
  time_paths(paths, reps, rng);
  time_levels(reps, rng);
  return failures == 0 ? 0 : 1;
}
