// AVX2 FastScan kernel (compiled with -mavx2). Reads the blocked layout of fastscan.h.
#include <immintrin.h>

#include "fastscan.h"

namespace vecstore::fastscan::avx2 {

namespace {

// The 16-entry table of nibble position p in both 128-bit lanes.
inline __m256i table(const uint8_t* tables, std::ptrdiff_t p) {
  return _mm256_broadcastsi128_si256(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(tables + 16 * p)));
}

}  // namespace

// One block of 32 rows per outer iteration. A looked-up vector r holds one byte per row;
// viewed as 16-bit words it is even_row + 256*odd_row, so adding r to `all` and r >> 8 to
// `odd` keeps, per word, all = even + 256*odd and odd exactly (mod 2^16); the even sums
// are all - (odd << 8). Lookups of low and high nibbles go to separate accumulators.
void accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_bytes,
                const uint8_t* tables, uint16_t* sums) {
  const __m256i mask = _mm256_set1_epi8(0x0F);
  for (std::ptrdiff_t i = 0; i < n_blocks; ++i) {
    const uint8_t* block = blocked + i * kBlockRows * n_bytes;
    __m256i all_lo = _mm256_setzero_si256();
    __m256i all_hi = _mm256_setzero_si256();
    __m256i odd_lo = _mm256_setzero_si256();
    __m256i odd_hi = _mm256_setzero_si256();
    for (std::ptrdiff_t b = 0; b < n_bytes; ++b) {
      const __m256i c =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + b * kBlockRows));
      const __m256i lo = _mm256_and_si256(c, mask);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(c, 4), mask);
      const __m256i r_lo = _mm256_shuffle_epi8(table(tables, 2 * b), lo);
      const __m256i r_hi = _mm256_shuffle_epi8(table(tables, 2 * b + 1), hi);
      all_lo = _mm256_add_epi16(all_lo, r_lo);
      all_hi = _mm256_add_epi16(all_hi, r_hi);
      odd_lo = _mm256_add_epi16(odd_lo, _mm256_srli_epi16(r_lo, 8));
      odd_hi = _mm256_add_epi16(odd_hi, _mm256_srli_epi16(r_hi, 8));
    }
    const __m256i odd = _mm256_add_epi16(odd_lo, odd_hi);
    const __m256i even =
        _mm256_sub_epi16(_mm256_add_epi16(all_lo, all_hi), _mm256_slli_epi16(odd, 8));
    // Word w of lane l is row 16l + 2w (even) or 16l + 2w + 1 (odd): interleave, then
    // put the lanes in row order.
    const __m256i a = _mm256_unpacklo_epi16(even, odd);  // rows 0-7 | 16-23
    const __m256i c = _mm256_unpackhi_epi16(even, odd);  // rows 8-15 | 24-31
    __m256i* out = reinterpret_cast<__m256i*>(sums + i * kBlockRows);
    _mm256_storeu_si256(out, _mm256_permute2x128_si256(a, c, 0x20));
    _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(a, c, 0x31));
  }
}

}  // namespace vecstore::fastscan::avx2
