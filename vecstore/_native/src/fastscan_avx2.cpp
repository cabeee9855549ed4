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

// Accumulators of one block. A looked-up vector r holds one byte per row; as 16-bit
// words it reads even_row + 256*odd_row, so adding r to `all` and r >> 8 to `odd` keeps,
// per word, all = even + 256*odd and odd exact (mod 2^16).
struct Sums {
  __m256i all;
  __m256i odd;
};

// Adds the lookups of byte position b (the 32 bytes at block + 32b) to s.
inline void add_byte(const uint8_t* block, std::ptrdiff_t b, const uint8_t* tables,
                     Sums& s) {
  const __m256i mask = _mm256_set1_epi8(0x0F);
  const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + b * kBlockRows));
  const __m256i r_lo = _mm256_shuffle_epi8(table(tables, 2 * b), _mm256_and_si256(c, mask));
  const __m256i r_hi = _mm256_shuffle_epi8(table(tables, 2 * b + 1),
                                           _mm256_and_si256(_mm256_srli_epi16(c, 4), mask));
  s.all = _mm256_add_epi16(s.all, _mm256_add_epi16(r_lo, r_hi));
  s.odd = _mm256_add_epi16(
      s.odd, _mm256_add_epi16(_mm256_srli_epi16(r_lo, 8), _mm256_srli_epi16(r_hi, 8)));
}

}  // namespace

// One block of 32 rows per outer iteration, byte positions two at a time into two
// independent sets of accumulators. At the end even = all - (odd << 8), and the words
// (word w of lane l is row 16l + 2w, or 16l + 2w + 1 for odd) are put in row order.
void accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_bytes,
                const uint8_t* tables, uint16_t* sums) {
  for (std::ptrdiff_t i = 0; i < n_blocks; ++i) {
    const uint8_t* block = blocked + i * kBlockRows * n_bytes;
    Sums s0 = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    Sums s1 = s0;
    std::ptrdiff_t b = 0;
    for (; b + 1 < n_bytes; b += 2) {
      add_byte(block, b, tables, s0);
      add_byte(block, b + 1, tables, s1);
    }
    if (b < n_bytes) {
      add_byte(block, b, tables, s0);
    }
    const __m256i odd = _mm256_add_epi16(s0.odd, s1.odd);
    const __m256i even =
        _mm256_sub_epi16(_mm256_add_epi16(s0.all, s1.all), _mm256_slli_epi16(odd, 8));
    const __m256i a = _mm256_unpacklo_epi16(even, odd);  // rows 0-7 | 16-23
    const __m256i c = _mm256_unpackhi_epi16(even, odd);  // rows 8-15 | 24-31
    __m256i* out = reinterpret_cast<__m256i*>(sums + i * kBlockRows);
    _mm256_storeu_si256(out, _mm256_permute2x128_si256(a, c, 0x20));
    _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(a, c, 0x31));
  }
}

}  // namespace vecstore::fastscan::avx2
