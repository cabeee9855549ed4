// AVX-512 FastScan kernel (compiled with -mavx512f -mavx512bw -mavx512vl). Reads the
// blocked layout of fastscan.h.
#include <immintrin.h>

#include <vector>

#include "fastscan.h"

namespace vecstore::fastscan::avx512 {

// One block of 32 rows per outer iteration, two byte positions b, b+1 per zmm (the 64
// contiguous bytes block[b*32 .. b*32+63]): lanes 0-1 hold byte b, lanes 2-3 byte b+1,
// so each lane is looked up with its own table by vpshufb. Word accumulation as in the
// AVX2 kernel: all = even + 256*odd, odd exact, even = all - (odd << 8).
void accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_bytes,
                const uint8_t* tables, uint16_t* sums) {
  const std::ptrdiff_t n_pairs = n_bytes / 2;
  // For byte pair q (bytes 2q, 2q+1): the low-nibble tables of nibble positions 4q, 4q,
  // 4q+2, 4q+2 (one per lane), then the high-nibble ones 4q+1, 4q+1, 4q+3, 4q+3.
  std::vector<__m512i> pair_tables(static_cast<std::size_t>(2 * n_pairs));
  for (std::ptrdiff_t q = 0; q < n_pairs; ++q) {
    for (int h = 0; h < 2; ++h) {
      const __m128i t0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tables + 64 * q + 16 * h));
      const __m128i t1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tables + 64 * q + 32 + 16 * h));
      __m512i t = _mm512_broadcast_i32x4(t0);
      t = _mm512_inserti32x4(t, t1, 2);
      t = _mm512_inserti32x4(t, t1, 3);
      pair_tables[static_cast<std::size_t>(2 * q + h)] = t;
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
      const __m512i r_lo = _mm512_shuffle_epi8(pair_tables[2 * q], lo);
      const __m512i r_hi = _mm512_shuffle_epi8(pair_tables[2 * q + 1], hi);
      all_lo = _mm512_add_epi16(all_lo, r_lo);
      all_hi = _mm512_add_epi16(all_hi, r_hi);
      odd_lo = _mm512_add_epi16(odd_lo, _mm512_srli_epi16(r_lo, 8));
      odd_hi = _mm512_add_epi16(odd_hi, _mm512_srli_epi16(r_hi, 8));
    }
    const __m512i all2 = _mm512_add_epi16(all_lo, all_hi);
    const __m512i odd2 = _mm512_add_epi16(odd_lo, odd_hi);
    __m256i all = _mm256_add_epi16(_mm512_castsi512_si256(all2), _mm512_extracti64x4_epi64(all2, 1));
    __m256i odd = _mm256_add_epi16(_mm512_castsi512_si256(odd2), _mm512_extracti64x4_epi64(odd2, 1));
    if (n_bytes % 2 != 0) {
      const std::ptrdiff_t b = n_bytes - 1;
      const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + b * kBlockRows));
      const __m256i m = _mm512_castsi512_si256(mask);
      const __m256i t_lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tables + 32 * b)));
      const __m256i t_hi = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tables + 32 * b + 16)));
      const __m256i r_lo = _mm256_shuffle_epi8(t_lo, _mm256_and_si256(c, m));
      const __m256i r_hi = _mm256_shuffle_epi8(t_hi, _mm256_and_si256(_mm256_srli_epi16(c, 4), m));
      all = _mm256_add_epi16(all, _mm256_add_epi16(r_lo, r_hi));
      odd = _mm256_add_epi16(odd, _mm256_add_epi16(_mm256_srli_epi16(r_lo, 8), _mm256_srli_epi16(r_hi, 8)));
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
