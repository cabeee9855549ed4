// AVX-512 FastScan kernel (compiled with -mavx512f -mavx512bw -mavx512vl). Reads the
// blocked layout of fastscan.h.
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "fastscan.h"

namespace vecstore::fastscan::avx512 {

namespace {

// The 16-entry table of nibble position p in both 128-bit lanes.
inline __m256i table256(const uint8_t* tables, std::ptrdiff_t p) {
  return _mm256_broadcastsi128_si256(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(tables + 16 * p)));
}

// One zmm of table bytes, 64-byte aligned so that its loads never split cache lines.
struct alignas(64) Table512 {
  uint8_t bytes[64];
};

// Word-wise sum of the two 256-bit halves.
inline __m256i add_halves(__m512i x) {
  return _mm256_add_epi16(_mm512_castsi512_si256(x), _mm512_extracti64x4_epi64(x, 1));
}

}  // namespace

// One block of 32 rows per outer iteration, two byte positions 2q, 2q+1 per zmm (the 64
// contiguous bytes at block + 64q): lanes 0-1 hold byte 2q of the 32 rows, lanes 2-3 byte
// 2q+1, and vpshufb looks each lane up in its own table. Word accumulation as in the AVX2
// kernel: per 16-bit word, all = even_row + 256*odd_row and odd = odd_row (mod 2^16), so
// even = all - (odd << 8); the two 256-bit halves (bytes 2q and 2q+1) are added at the end.
void accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_bytes,
                const uint8_t* tables, uint16_t* sums) {
  const std::ptrdiff_t n_pairs = n_bytes / 2;
  // For byte pair q (bytes 2q, 2q+1): the low-nibble tables of nibble positions 4q, 4q,
  // 4q+2, 4q+2 (one per lane), then the high-nibble ones 4q+1, 4q+1, 4q+3, 4q+3.
  std::vector<Table512> pair_tables(static_cast<std::size_t>(2 * n_pairs));
  for (std::ptrdiff_t q = 0; q < n_pairs; ++q) {
    for (std::ptrdiff_t h = 0; h < 2; ++h) {
      for (std::ptrdiff_t lane = 0; lane < 4; ++lane) {
        std::memcpy(pair_tables[static_cast<std::size_t>(2 * q + h)].bytes + 16 * lane,
                    tables + 16 * (4 * q + 2 * (lane / 2) + h), 16);
      }
    }
  }
  const __m512i mask = _mm512_set1_epi8(0x0F);
  for (std::ptrdiff_t i = 0; i < n_blocks; ++i) {
    const uint8_t* block = blocked + i * kBlockRows * n_bytes;
    __m512i all_lo = _mm512_setzero_si512();
    __m512i all_hi = _mm512_setzero_si512();
    __m512i odd_lo = _mm512_setzero_si512();
    __m512i odd_hi = _mm512_setzero_si512();
    for (std::ptrdiff_t q = 0; q < n_pairs; ++q) {
      const __m512i c = _mm512_loadu_si512(block + 2 * q * kBlockRows);
      const __m512i lo = _mm512_and_si512(c, mask);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(c, 4), mask);
      const Table512* t = &pair_tables[static_cast<std::size_t>(2 * q)];
      const __m512i r_lo = _mm512_shuffle_epi8(_mm512_load_si512(t[0].bytes), lo);
      const __m512i r_hi = _mm512_shuffle_epi8(_mm512_load_si512(t[1].bytes), hi);
      all_lo = _mm512_add_epi16(all_lo, r_lo);
      all_hi = _mm512_add_epi16(all_hi, r_hi);
      odd_lo = _mm512_add_epi16(odd_lo, _mm512_srli_epi16(r_lo, 8));
      odd_hi = _mm512_add_epi16(odd_hi, _mm512_srli_epi16(r_hi, 8));
    }
    const __m512i all2 = _mm512_add_epi16(all_lo, all_hi);
    const __m512i odd2 = _mm512_add_epi16(odd_lo, odd_hi);
    __m256i all = add_halves(all2);
    __m256i odd = add_halves(odd2);
    if (n_bytes % 2 != 0) {
      // The last byte position on its own, 32 rows in one ymm.
      const std::ptrdiff_t b = n_bytes - 1;
      const __m256i c =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + b * kBlockRows));
      const __m256i m = _mm512_castsi512_si256(mask);
      const __m256i r_lo = _mm256_shuffle_epi8(table256(tables, 2 * b), _mm256_and_si256(c, m));
      const __m256i r_hi = _mm256_shuffle_epi8(table256(tables, 2 * b + 1),
                                               _mm256_and_si256(_mm256_srli_epi16(c, 4), m));
      all = _mm256_add_epi16(all, _mm256_add_epi16(r_lo, r_hi));
      odd = _mm256_add_epi16(
          odd, _mm256_add_epi16(_mm256_srli_epi16(r_lo, 8), _mm256_srli_epi16(r_hi, 8)));
    }
    const __m256i even = _mm256_sub_epi16(all, _mm256_slli_epi16(odd, 8));
    const __m256i a = _mm256_unpacklo_epi16(even, odd);  // rows 0-7 | 16-23
    const __m256i c = _mm256_unpackhi_epi16(even, odd);  // rows 8-15 | 24-31
    __m256i* out = reinterpret_cast<__m256i*>(sums + i * kBlockRows);
    _mm256_storeu_si256(out, _mm256_permute2x128_si256(a, c, 0x20));
    _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(a, c, 0x31));
  }
}

}  // namespace vecstore::fastscan::avx512
