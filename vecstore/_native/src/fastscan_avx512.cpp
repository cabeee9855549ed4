// AVX-512 FastScan kernel (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vbmi
// -mavx512vnni). Reads the blocked layout of fastscan.h: a zmm holds 16 rows of four code
// bytes; vpermb looks each byte up in the 16 entries of its own position (the index's bits
// 4-5 name the byte's place in its lane) and vpdpbusd adds a lane's four results into that
// row's 32-bit sum, so sums never wrap.
#include <immintrin.h>

#include "fastscan.h"

namespace vecstore::fastscan::avx512 {

namespace {

// Queries scored together, their accumulators in registers.
constexpr int kGroup = 4;

// How far ahead of each load the scan prefetches (measured best of 0.5-4 KB, and better
// than two or four interleaved block streams, on a single query over 19 MB of codes).
constexpr std::ptrdiff_t kPrefetchBytes = 512;

struct Constants {
  __m512i position = _mm512_set1_epi32(0x30201000);
  __m512i nibble = _mm512_set1_epi8(0x0F);
  __m512i ones = _mm512_set1_epi8(1);
};

// The vpermb indices of the low and high nibbles of 64 code bytes.
inline void indices(const Constants& k, __m512i codes, __m512i& low, __m512i& high) {
  low = _mm512_ternarylogic_epi32(codes, k.nibble, k.position, 0xEA);  // (c & 15) | position
  high = _mm512_ternarylogic_epi32(_mm512_srli_epi16(codes, 4), k.nibble, k.position, 0xEA);
}

// acc += the table sums of the 16 rows whose indices are low and high.
inline __m512i add_lookups(const Constants& k, __m512i acc, __m512i low, __m512i high,
                           __m512i low_table, __m512i high_table) {
  acc = _mm512_dpbusd_epi32(acc, _mm512_permutexvar_epi8(low, low_table), k.ones);
  return _mm512_dpbusd_epi32(acc, _mm512_permutexvar_epi8(high, high_table), k.ones);
}

inline __m512i load(const uint8_t* p) { return _mm512_loadu_si512(p); }

inline void prefetch(const uint8_t* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes + 64), _MM_HINT_T0);
}

// Block i for NQ queries at once, sharing each load of codes and its indices.
template <int NQ>
void block(const Constants& k, const uint8_t* codes, std::ptrdiff_t i, std::ptrdiff_t n_quads,
           const uint8_t* const* tables, uint32_t* const* sums) {
  __m512i acc[NQ][2];
  for (int q = 0; q < NQ; ++q) acc[q][0] = acc[q][1] = _mm512_setzero_si512();
  for (std::ptrdiff_t g = 0; g < n_quads; ++g) {
    prefetch(codes + 128 * g);
    __m512i low0, high0, low1, high1;
    indices(k, load(codes + 128 * g), low0, high0);
    indices(k, load(codes + 128 * g + 64), low1, high1);
    for (int q = 0; q < NQ; ++q) {
      const __m512i low_table = load(tables[q] + 128 * g);
      const __m512i high_table = load(tables[q] + 128 * g + 64);
      acc[q][0] = add_lookups(k, acc[q][0], low0, high0, low_table, high_table);
      acc[q][1] = add_lookups(k, acc[q][1], low1, high1, low_table, high_table);
    }
  }
  for (int q = 0; q < NQ; ++q) {
    _mm512_storeu_si512(sums[q] + i * kBlockRows, acc[q][0]);
    _mm512_storeu_si512(sums[q] + i * kBlockRows + 16, acc[q][1]);
  }
}

}  // namespace

// Block by block, every query in groups of up to four: a block's codes stay in the first
// level cache while all the queries score them.
void accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_quads,
                const uint8_t* const* tables, int nq, uint32_t* const* sums) {
  const Constants k;
  const std::ptrdiff_t block_bytes = kBlockRows * 4 * n_quads;
  for (std::ptrdiff_t i = 0; i < n_blocks; ++i) {
    const uint8_t* codes = blocked + i * block_bytes;
    for (int q = 0; q < nq; q += kGroup) {
      switch (nq - q < kGroup ? nq - q : kGroup) {
        case 1: block<1>(k, codes, i, n_quads, tables + q, sums + q); break;
        case 2: block<2>(k, codes, i, n_quads, tables + q, sums + q); break;
        case 3: block<3>(k, codes, i, n_quads, tables + q, sums + q); break;
        default: block<4>(k, codes, i, n_quads, tables + q, sums + q); break;
      }
    }
  }
}

}  // namespace vecstore::fastscan::avx512
