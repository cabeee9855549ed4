// Portable parts of FastScan: the blocked layout, the scalar kernel and CPU detection.
#include <cstring>
#include <vector>

#include "fastscan.h"

namespace vecstore::fastscan {

std::ptrdiff_t blocked_size(std::ptrdiff_t n, std::ptrdiff_t n_bytes) {
  return block_count(n) * kBlockRows * padded_bytes(n_bytes);
}

void code_bytes(const uint8_t* row, const Values& values, std::ptrdiff_t n_bytes,
                uint8_t* out) {
  if (values.bits == 0) {
    std::memcpy(out, row, static_cast<std::size_t>(n_bytes));
    return;
  }
  std::memset(out, 0, static_cast<std::size_t>(values.head));
  const int bits = values.bits;
  const int width = value_width(bits);
  const int per_byte = 8 / width;
  const unsigned mask = (1u << bits) - 1;
  for (std::ptrdiff_t j = 0; j < values.count; ++j) {
    const std::ptrdiff_t bit = j * bits;
    const int within = static_cast<int>(bit & 7);
    unsigned word = row[bit >> 3];
    if (within + bits > 8) word |= static_cast<unsigned>(row[(bit >> 3) + 1]) << 8;
    const unsigned value = (word >> within) & mask;
    out[j / per_byte] |= static_cast<uint8_t>(value << ((j % per_byte) * width));
  }
  std::memcpy(out + values.head, row + values.tail_from,
              static_cast<std::size_t>(n_bytes - values.head));
}

void block_codes(const uint8_t* codes, std::ptrdiff_t n, std::ptrdiff_t stride,
                 std::ptrdiff_t n_bytes, const Values& values, uint8_t* out) {
  const std::ptrdiff_t padded = padded_bytes(n_bytes);
  const std::ptrdiff_t n_blocks = block_count(n);
  std::vector<uint8_t> scratch(values.bits == 0 ? 0 : static_cast<std::size_t>(n_bytes));
  for (std::ptrdiff_t i = 0; i < n_blocks; ++i) {
    uint8_t* block = out + i * kBlockRows * padded;
    const std::ptrdiff_t rows = n - i * kBlockRows < kBlockRows ? n - i * kBlockRows : kBlockRows;
    if (rows < kBlockRows || padded != n_bytes) {
      std::memset(block, 0, static_cast<std::size_t>(kBlockRows * padded));
    }
    const std::ptrdiff_t full = n_bytes / 4;
    for (std::ptrdiff_t r = 0; r < rows; ++r) {
      const uint8_t* row = codes + (i * kBlockRows + r) * stride;
      if (values.bits != 0) {
        code_bytes(row, values, n_bytes, scratch.data());
        row = scratch.data();
      }
      uint8_t* lane = block + 4 * r;
      for (std::ptrdiff_t g = 0; g < full; ++g) std::memcpy(lane + g * 128, row + 4 * g, 4);
      for (std::ptrdiff_t b = 4 * full; b < n_bytes; ++b) lane[full * 128 + (b - 4 * full)] = row[b];
    }
  }
}

namespace scalar {
namespace {

// sums[q][32*i + r] = the sum over quads g of quad_sum(q, g, the four code bytes of row r
// of block i in quad g), for every query q < nq and block i < n_blocks.
template <typename QuadSum>
void block_sums(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_quads,
                int nq, int32_t* const* sums, const QuadSum& quad_sum) {
  for (int q = 0; q < nq; ++q) {
    for (std::ptrdiff_t i = 0; i < n_blocks; ++i) {
      const uint8_t* block = blocked + i * kBlockRows * 4 * n_quads;
      int32_t acc[kBlockRows] = {};
      for (std::ptrdiff_t g = 0; g < n_quads; ++g) {
        const uint8_t* quad = block + g * 4 * kBlockRows;
        for (std::ptrdiff_t r = 0; r < kBlockRows; ++r)
          acc[r] += quad_sum(q, g, quad + 4 * r);
      }
      std::memcpy(sums[q] + i * kBlockRows, acc, sizeof(acc));
    }
  }
}

}  // namespace

void accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_quads,
                const uint8_t* const* tables, int nq, int32_t* const* sums) {
  block_sums(blocked, n_blocks, n_quads, nq, sums,
             [&](int q, std::ptrdiff_t g, const uint8_t* c) {
               const uint8_t* lo = tables[q] + 128 * g;
               const uint8_t* hi = lo + 64;
               int32_t sum = 0;
               for (int j = 0; j < 4; ++j)
                 sum += lo[16 * j + (c[j] & 15)] + hi[16 * j + (c[j] >> 4)];
               return sum;
             });
}

void level_accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_quads,
                      const uint8_t* levels, const int8_t* const* weights, int nq,
                      int32_t* const* sums) {
  block_sums(blocked, n_blocks, n_quads, nq, sums,
             [&](int q, std::ptrdiff_t g, const uint8_t* c) {
               const int8_t* w = weights[q] + 8 * g;
               int32_t sum = 0;
               for (int j = 0; j < 4; ++j)
                 sum += levels[c[j] & 15] * w[j] + levels[c[j] >> 4] * w[4 + j];
               return sum;
             });
}

void byte_level_accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks,
                           std::ptrdiff_t n_quads, const uint8_t* levels,
                           const int8_t* const* weights, int nq, int32_t* const* sums) {
  block_sums(blocked, n_blocks, n_quads, nq, sums,
             [&](int q, std::ptrdiff_t g, const uint8_t* c) {
               const int8_t* w = weights[q] + 4 * g;
               int32_t sum = 0;
               for (int j = 0; j < 4; ++j) sum += levels[c[j]] * w[j];
               return sum;
             });
}

}  // namespace scalar

#if defined(__x86_64__) || defined(_M_X64)
bool cpu_has_avx2() { return __builtin_cpu_supports("avx2"); }

bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi") &&
         __builtin_cpu_supports("avx512vnni");
}
#else
// Other architectures (aarch64) build the scalar kernel only.
bool cpu_has_avx2() { return false; }
bool cpu_has_avx512() { return false; }
#endif

}  // namespace vecstore::fastscan
