// AVX2 FastScan kernel (compiled with -mavx2). Reads the blocked layout of fastscan.h: a
// ymm holds 8 rows of four code bytes. vpshufb has one 16-entry table per 128-bit lane, so
// each of a lane's four byte places takes its own lookup, with the other places' indices
// given the high bit (vpshufb writes zero there); vpmaddubsw and vpmaddwd then add a row's
// four results into its 32-bit sum.
#include <immintrin.h>

#include "fastscan.h"

namespace vecstore::fastscan::avx2 {

namespace {

inline __m256i load(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// The 16 entries of byte place j of a quad's low or high table, in both lanes.
inline __m256i place_table(const uint8_t* half_table, int j) {
  return _mm256_broadcastsi128_si256(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(half_table + 16 * j)));
}

// Per row (32-bit lane) the sum of its four bytes' lookups in half_table, from indices
// that already carry the high bit outside each place (indices[j] for place j).
inline __m256i lookups(const __m256i* indices, const uint8_t* half_table) {
  __m256i found = _mm256_shuffle_epi8(place_table(half_table, 0), indices[0]);
  for (int j = 1; j < 4; ++j)
    found = _mm256_or_si256(found, _mm256_shuffle_epi8(place_table(half_table, j), indices[j]));
  return found;
}

// Block i for NQ queries: each ymm of codes is split into per-place indices once and
// looked up in every query's tables.
template <int NQ>
void block(const uint8_t* codes, std::ptrdiff_t i, std::ptrdiff_t n_quads,
           const uint8_t* const* tables, int32_t* const* sums) {
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  // Place j keeps its own byte of every 32-bit lane; the others get the high bit.
  const __m256i others[4] = {_mm256_set1_epi32(static_cast<int>(0x80808000u)),
                             _mm256_set1_epi32(static_cast<int>(0x80800080u)),
                             _mm256_set1_epi32(static_cast<int>(0x80008080u)),
                             _mm256_set1_epi32(static_cast<int>(0x00808080u))};
  // acc[q][v] holds the 32-bit sums of rows 8v to 8v + 7 for query q.
  __m256i acc[NQ][4];
  for (int q = 0; q < NQ; ++q)
    for (int v = 0; v < 4; ++v) acc[q][v] = _mm256_setzero_si256();
  for (std::ptrdiff_t g = 0; g < n_quads; ++g) {
    for (int v = 0; v < 4; ++v) {
      const __m256i quad = load(codes + 128 * g + 32 * v);
      const __m256i low = _mm256_and_si256(quad, nibble);
      const __m256i high = _mm256_and_si256(_mm256_srli_epi16(quad, 4), nibble);
      __m256i low_indices[4], high_indices[4];
      for (int j = 0; j < 4; ++j) {
        low_indices[j] = _mm256_or_si256(low, others[j]);
        high_indices[j] = _mm256_or_si256(high, others[j]);
      }
      for (int q = 0; q < NQ; ++q) {
        const uint8_t* table = tables[q] + 128 * g;
        const __m256i pairs =
            _mm256_add_epi16(_mm256_maddubs_epi16(lookups(low_indices, table), ones8),
                             _mm256_maddubs_epi16(lookups(high_indices, table + 64), ones8));
        acc[q][v] = _mm256_add_epi32(acc[q][v], _mm256_madd_epi16(pairs, ones16));
      }
    }
  }
  for (int q = 0; q < NQ; ++q)
    for (int v = 0; v < 4; ++v)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(sums[q] + i * kBlockRows + 8 * v),
                          acc[q][v]);
}

}  // namespace

void accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_quads,
                const uint8_t* const* tables, int nq, int32_t* const* sums) {
  const std::ptrdiff_t block_bytes = kBlockRows * 4 * n_quads;
  for (std::ptrdiff_t i = 0; i < n_blocks; ++i) {
    const uint8_t* codes = blocked + i * block_bytes;
    for (int q = 0; q < nq; q += 2) {
      if (nq - q == 1) {
        block<1>(codes, i, n_quads, tables + q, sums + q);
      } else {
        block<2>(codes, i, n_quads, tables + q, sums + q);
      }
    }
  }
}

}  // namespace vecstore::fastscan::avx2
