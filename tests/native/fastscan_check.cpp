// Checks and times the FastScan kernels of vecstore/_native/src/fastscan*.cpp.
//
// Build and run from the repository root:
//   S=vecstore/_native/src
//   g++ -O3 -std=c++17 -c -mavx2 -I$S $S/fastscan_avx2.cpp -o /tmp/fastscan_avx2.o
//   g++ -O3 -std=c++17 -c -mavx512f -mavx512bw -mavx512vl -I$S $S/fastscan_avx512.cpp -o /tmp/fastscan_avx512.o
//   g++ -O3 -std=c++17 -I$S tests/native/fastscan_check.cpp $S/fastscan_scalar.cpp /tmp/fastscan_avx2.o /tmp/fastscan_avx512.o -o /tmp/fastscan_check
//   /tmp/fastscan_check [timing runs, default 20]
// The same with -O1 -g -fsanitize=address,undefined in the three g++ commands checks bounds.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "fastscan.h"

namespace fs = vecstore::fastscan;

namespace {

using Kernel = void (*)(const uint8_t*, std::ptrdiff_t, std::ptrdiff_t, const uint8_t*,
                        uint16_t*);

struct Path {
  const char* name;
  Kernel kernel;
  bool available;
};

// Row-major reference over the original (unblocked) codes.
std::vector<uint16_t> naive(const std::vector<uint8_t>& codes, std::ptrdiff_t n,
                            std::ptrdiff_t stride, std::ptrdiff_t n_bytes,
                            const std::vector<uint8_t>& tables) {
  std::vector<uint16_t> sums(static_cast<std::size_t>(n));
  for (std::ptrdiff_t r = 0; r < n; ++r) {
    uint32_t s = 0;
    for (std::ptrdiff_t b = 0; b < n_bytes; ++b) {
      const uint8_t c = codes[static_cast<std::size_t>(r * stride + b)];
      s += tables[static_cast<std::size_t>(32 * b + (c & 15))];
      s += tables[static_cast<std::size_t>(32 * b + 16 + (c >> 4))];
    }
    sums[static_cast<std::size_t>(r)] = static_cast<uint16_t>(s);
  }
  return sums;
}

// Runs kernel on blocked (sized exactly, so a sanitizer build catches over-reads) into
// n_blocks*32 sums followed by 8 guard entries that must stay untouched.
std::vector<uint16_t> run(Kernel kernel, const std::vector<uint8_t>& blocked,
                          std::ptrdiff_t n_blocks, std::ptrdiff_t n_bytes,
                          const std::vector<uint8_t>& tables) {
  const std::size_t n_sums = static_cast<std::size_t>(n_blocks * fs::kBlockRows);
  std::vector<uint16_t> sums(n_sums + 8, 0xBEEF);
  kernel(blocked.data(), n_blocks, n_bytes, tables.data(), sums.data());
  if (!std::all_of(sums.begin() + static_cast<std::ptrdiff_t>(n_sums), sums.end(),
                   [](uint16_t v) { return v == 0xBEEF; })) {
    std::printf("FAIL: write past the end of sums\n");
    std::exit(1);
  }
  sums.resize(n_sums);
  return sums;
}

// Checks one shape: scalar against the naive loop (rows past n score as all-zero codes),
// every other available path against scalar. Returns the number of failures.
int check_shape(const std::vector<Path>& paths, std::ptrdiff_t n, std::ptrdiff_t n_bytes,
                std::ptrdiff_t stride, bool max_tables, std::mt19937_64& rng) {
  std::vector<uint8_t> codes(static_cast<std::size_t>(n * stride));
  for (auto& c : codes) c = static_cast<uint8_t>(rng());
  // Random tables, or all 255 so that wide rows wrap past 2^16.
  std::vector<uint8_t> tables(static_cast<std::size_t>(32 * n_bytes));
  for (auto& t : tables) t = max_tables ? 255 : static_cast<uint8_t>(rng());
  const std::ptrdiff_t n_blocks = (n + fs::kBlockRows - 1) / fs::kBlockRows;
  std::vector<uint8_t> blocked(static_cast<std::size_t>(fs::blocked_size(n, n_bytes)), 0xAA);
  fs::block_codes(codes.data(), n, stride, n_bytes, blocked.data());

  const std::vector<uint16_t> want = naive(codes, n, stride, n_bytes, tables);
  const uint16_t pad_sum =
      naive(std::vector<uint8_t>(static_cast<std::size_t>(n_bytes)), 1, n_bytes, n_bytes,
            tables)[0];
  const std::vector<uint16_t> ref = run(fs::scalar::accumulate, blocked, n_blocks, n_bytes,
                                        tables);
  int failures = 0;
  const char* kind = max_tables ? "max" : "random";
  if (!std::equal(want.begin(), want.end(), ref.begin()) ||
      !std::all_of(ref.begin() + n, ref.end(), [&](uint16_t v) { return v == pad_sum; })) {
    std::printf("FAIL scalar vs naive: n=%td n_bytes=%td stride=%td tables=%s\n", n, n_bytes,
                stride, kind);
    ++failures;
  }
  for (const Path& p : paths) {
    if (!p.available || p.kernel == fs::scalar::accumulate) continue;
    if (run(p.kernel, blocked, n_blocks, n_bytes, tables) != ref) {
      std::printf("FAIL %s vs scalar: n=%td n_bytes=%td stride=%td tables=%s\n", p.name, n,
                  n_bytes, stride, kind);
      ++failures;
    }
  }
  return failures;
}

// Min over reps runs of each available path on n = 100000 rows of 192 bytes.
void time_paths(const std::vector<Path>& paths, int reps, std::mt19937_64& rng) {
  const std::ptrdiff_t n = 100000;
  const std::ptrdiff_t n_bytes = 192;
  std::vector<uint8_t> codes(static_cast<std::size_t>(n * n_bytes));
  for (auto& c : codes) c = static_cast<uint8_t>(rng());
  std::vector<uint8_t> tables(static_cast<std::size_t>(32 * n_bytes));
  for (auto& t : tables) t = static_cast<uint8_t>(rng() % 86);  // sums stay below 2^15
  const std::ptrdiff_t n_blocks = (n + fs::kBlockRows - 1) / fs::kBlockRows;
  std::vector<uint8_t> blocked(static_cast<std::size_t>(fs::blocked_size(n, n_bytes)));
  fs::block_codes(codes.data(), n, n_bytes, n_bytes, blocked.data());
  std::vector<uint16_t> sums(static_cast<std::size_t>(n_blocks * fs::kBlockRows));
  for (const Path& p : paths) {
    if (!p.available) {
      std::printf("%-7s not supported on this CPU\n", p.name);
      continue;
    }
    double best = 1e30;
    for (int rep = 0; rep < reps; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      p.kernel(blocked.data(), n_blocks, n_bytes, tables.data(), sums.data());
      const auto t1 = std::chrono::steady_clock::now();
      best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
    }
    std::printf("%-7s n=%td n_bytes=%td: %.3f ms (min of %d), %.1f GB/s of blocked codes\n",
                p.name, n, n_bytes, best * 1e3, reps,
                static_cast<double>(blocked.size()) / best * 1e-9);
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
  for (const std::ptrdiff_t n : {1, 31, 32, 33, 1000, 100003}) {
    for (const std::ptrdiff_t n_bytes : {1, 2, 3, 4, 7, 25, 48, 192}) {
      for (const std::ptrdiff_t stride : {n_bytes, n_bytes + 4}) {
        for (const bool max_tables : {false, true}) {
          failures += check_shape(paths, n, n_bytes, stride, max_tables, rng);
          ++shapes;
        }
      }
    }
  }
  std::printf("%d shapes checked, %d failures\n", shapes, failures);
  time_paths(paths, reps, rng);
  return failures == 0 ? 0 : 1;
}
