// Portable parts of FastScan: the blocked layout, the scalar kernel and CPU detection.
#include <cstring>

#include "fastscan.h"

namespace vecstore::fastscan {

std::ptrdiff_t blocked_size(std::ptrdiff_t n, std::ptrdiff_t n_bytes) {
  return (n + kBlockRows - 1) / kBlockRows * kBlockRows * n_bytes;
}

void block_codes(const uint8_t* codes, std::ptrdiff_t n, std::ptrdiff_t stride,
                 std::ptrdiff_t n_bytes, uint8_t* out) {
  const std::ptrdiff_t n_blocks = (n + kBlockRows - 1) / kBlockRows;
  for (std::ptrdiff_t i = 0; i < n_blocks; ++i) {
    uint8_t* block = out + i * kBlockRows * n_bytes;
    const std::ptrdiff_t rows = n - i * kBlockRows < kBlockRows ? n - i * kBlockRows : kBlockRows;
    if (rows < kBlockRows) {
      std::memset(block, 0, static_cast<std::size_t>(kBlockRows * n_bytes));
    }
    for (std::ptrdiff_t j = 0; j < rows; ++j) {
      const uint8_t* row = codes + (i * kBlockRows + j) * stride;
      for (std::ptrdiff_t b = 0; b < n_bytes; ++b) {
        block[b * kBlockRows + j] = row[b];
      }
    }
  }
}

namespace scalar {

// One block at a time: for each byte position, add both nibble lookups to all 32 rows.
void accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_bytes,
                const uint8_t* tables, uint16_t* sums) {
  for (std::ptrdiff_t i = 0; i < n_blocks; ++i) {
    const uint8_t* block = blocked + i * kBlockRows * n_bytes;
    uint16_t acc[kBlockRows] = {};
    for (std::ptrdiff_t b = 0; b < n_bytes; ++b) {
      const uint8_t* lo = tables + 32 * b;
      const uint8_t* hi = lo + 16;
      const uint8_t* col = block + b * kBlockRows;
      for (std::ptrdiff_t j = 0; j < kBlockRows; ++j) {
        acc[j] = static_cast<uint16_t>(acc[j] + lo[col[j] & 15] + hi[col[j] >> 4]);
      }
    }
    std::memcpy(sums + i * kBlockRows, acc, sizeof(acc));
  }
}

}  // namespace scalar

#if defined(__x86_64__) || defined(_M_X64)
bool cpu_has_avx2() { return __builtin_cpu_supports("avx2"); }

bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}
#else
// Other architectures (aarch64) build the scalar kernel only.
bool cpu_has_avx2() { return false; }
bool cpu_has_avx512() { return false; }
#endif

}  // namespace vecstore::fastscan
