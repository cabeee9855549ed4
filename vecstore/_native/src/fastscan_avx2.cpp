// AVX2 FastScan kernel (compiled with -mavx2). Reads the blocked layout of fastscan.h, where
// a 128-bit lane holds 4 rows of four code bytes. vpshufb has one 16-entry table per lane,
// so each quad's four loads are first transposed in registers (a byte shuffle inside each
// lane, then a 4x4 transpose of 32-bit words across the loads) into four registers that
// each hold one byte place of all 32 rows: then one vpshufb looks up 32 nibbles of one
// table. The uint8 results are added as uint16 pairs, as FastScan does: one accumulator
// takes the pairs whole, the other their high bytes, which gives both rows' sums; they
// move into 32-bit sums before any row's 16-bit sum can wrap.
#include <immintrin.h>

#include <cstring>
#include <utility>

#include "fastscan.h"

namespace vecstore::fastscan::avx2 {

namespace {

// Queries scored together, sharing each transposed quad.
constexpr int kGroup = 2;

// Quads a 16-bit sum takes before it could pass 65535: each adds 8 entries of at most 255.
constexpr std::ptrdiff_t kFlushQuads = 32;

inline __m256i load(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// The 16 entries of one table, in both lanes.
inline __m256i table(const uint8_t* entries) {
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(entries)));
}

// The four byte places of quad g of a block's 32 rows: places[j] byte 16L + 4v + s is
// byte j of row 8v + 4L + s.
inline void transpose(const uint8_t* quad, __m256i* places) {
  // In each lane, byte 4s + j moves to 4j + s.
  const __m256i by_place = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                            0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  __m256i a[4];
  for (int v = 0; v < 4; ++v) a[v] = _mm256_shuffle_epi8(load(quad + 32 * v), by_place);
  const __m256i t0 = _mm256_unpacklo_epi32(a[0], a[1]), t1 = _mm256_unpackhi_epi32(a[0], a[1]);
  const __m256i t2 = _mm256_unpacklo_epi32(a[2], a[3]), t3 = _mm256_unpackhi_epi32(a[2], a[3]);
  places[0] = _mm256_unpacklo_epi64(t0, t2);
  places[1] = _mm256_unpackhi_epi64(t0, t2);
  places[2] = _mm256_unpacklo_epi64(t1, t3);
  places[3] = _mm256_unpackhi_epi64(t1, t3);
}

// One query's 16-bit sums: whole holds every uint16 pair's sum, high the sum of the pairs'
// high bytes; the sum of byte 2m is whole[m] - 256 * high[m] (mod 2^16), that of 2m + 1
// high[m].
struct Pairs {
  __m256i whole = _mm256_setzero_si256();
  __m256i high = _mm256_setzero_si256();
  void add(__m256i found) {
    whole = _mm256_add_epi16(whole, found);
    high = _mm256_add_epi16(high, _mm256_srli_epi16(found, 8));
  }
};

// Adds a query's 16-bit sums into its 32-bit sums of the block's rows, in row order.
inline void flush(Pairs& pairs, int32_t* rows) {
  alignas(32) uint16_t whole[16], high[16];
  const __m256i even = _mm256_sub_epi16(pairs.whole, _mm256_slli_epi16(pairs.high, 8));
  _mm256_store_si256(reinterpret_cast<__m256i*>(whole), even);
  _mm256_store_si256(reinterpret_cast<__m256i*>(high), pairs.high);
  for (int m = 0; m < 16; ++m) {
    // Byte b = 16L + 4v + s of a place register is row 8v + 4L + s.
    for (int odd = 0; odd < 2; ++odd) {
      const int b = 2 * m + odd;
      const int row = 8 * ((b >> 2) & 3) + 4 * (b >> 4) + (b & 3);
      rows[row] += odd ? high[m] : whole[m];
    }
  }
  pairs = Pairs{};
}

// Block i for NQ queries: every quad is transposed once and looked up in each query's
// tables.
template <int NQ>
void block(const uint8_t* codes, std::ptrdiff_t i, std::ptrdiff_t n_quads,
           const uint8_t* const* tables, int32_t* const* sums) {
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  alignas(32) int32_t rows[NQ][kBlockRows] = {};
  Pairs pairs[NQ];
  for (std::ptrdiff_t g = 0; g < n_quads; ++g) {
    __m256i places[4];
    transpose(codes + 128 * g, places);
    for (int j = 0; j < 4; ++j) {
      const __m256i low = _mm256_and_si256(places[j], nibble);
      const __m256i high = _mm256_and_si256(_mm256_srli_epi16(places[j], 4), nibble);
      for (int q = 0; q < NQ; ++q) {
        const uint8_t* quad_table = tables[q] + 128 * g + 16 * j;
        pairs[q].add(_mm256_shuffle_epi8(table(quad_table), low));
        pairs[q].add(_mm256_shuffle_epi8(table(quad_table + 64), high));
      }
    }
    if ((g + 1) % kFlushQuads == 0 || g + 1 == n_quads)
      for (int q = 0; q < NQ; ++q) flush(pairs[q], rows[q]);
  }
  for (int q = 0; q < NQ; ++q)
    std::memcpy(sums[q] + i * kBlockRows, rows[q], sizeof(rows[q]));
}

}  // namespace

void accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_quads,
                const uint8_t* const* tables, int nq, int32_t* const* sums) {
  const std::ptrdiff_t block_bytes = kBlockRows * 4 * n_quads;
  for (std::ptrdiff_t i = 0; i < n_blocks; ++i) {
    const uint8_t* codes = blocked + i * block_bytes;
    for (int q = 0; q < nq; q += kGroup) {
      if (nq - q == 1) {
        block<1>(codes, i, n_quads, tables + q, sums + q);
      } else {
        block<kGroup>(codes, i, n_quads, tables + q, sums + q);
      }
    }
  }
}

namespace {

// Queries the level-dot kernel scores together (four accumulators a query; 2 measured
// fastest on Zen 1, tests/native/fastscan_check.cpp).
constexpr int kLevelGroup = 2;

// Block i for NQ queries: the nibbles' levels are looked up once (vpshufb, one table for
// every position) and each query's weights of a quad, broadcast, multiply them: vpmaddubsw
// sums byte pairs into 16 bits, which cannot saturate with levels of at most 127 and
// weights of magnitude at most 127, and vpmaddwd sums those pairs into each row's 32 bits.
template <int NQ>
void level_block(const uint8_t* codes, std::ptrdiff_t i, std::ptrdiff_t n_quads,
                 __m256i levels, const int8_t* const* weights, int32_t* const* sums) {
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[NQ][4];
  for (int q = 0; q < NQ; ++q)
    for (int h = 0; h < 4; ++h) acc[q][h] = _mm256_setzero_si256();
  for (std::ptrdiff_t g = 0; g < n_quads; ++g) {
    for (int h = 0; h < 4; ++h) {
      const __m256i c = load(codes + 128 * g + 32 * h);
      const __m256i low = _mm256_shuffle_epi8(levels, _mm256_and_si256(c, nibble));
      const __m256i high =
          _mm256_shuffle_epi8(levels, _mm256_and_si256(_mm256_srli_epi16(c, 4), nibble));
      for (int q = 0; q < NQ; ++q) {
        int32_t low_weights, high_weights;
        std::memcpy(&low_weights, weights[q] + 8 * g, 4);
        std::memcpy(&high_weights, weights[q] + 8 * g + 4, 4);
        const __m256i by_low = _mm256_maddubs_epi16(low, _mm256_set1_epi32(low_weights));
        const __m256i by_high = _mm256_maddubs_epi16(high, _mm256_set1_epi32(high_weights));
        acc[q][h] = _mm256_add_epi32(acc[q][h],
                                     _mm256_add_epi32(_mm256_madd_epi16(by_low, ones),
                                                      _mm256_madd_epi16(by_high, ones)));
      }
    }
  }
  for (int q = 0; q < NQ; ++q)
    for (int h = 0; h < 4; ++h)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(sums[q] + i * kBlockRows + 8 * h),
                          acc[q][h]);
}

template <int... NQ>
void level_group(int n, const uint8_t* codes, std::ptrdiff_t i, std::ptrdiff_t n_quads,
                 __m256i levels, const int8_t* const* weights, int32_t* const* sums,
                 std::integer_sequence<int, NQ...>) {
  ((n == NQ + 1 ? level_block<NQ + 1>(codes, i, n_quads, levels, weights, sums) : void()), ...);
}

}  // namespace

void level_accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_quads,
                      const uint8_t* levels, const int8_t* const* weights, int nq,
                      int32_t* const* sums) {
  const __m256i table = _mm256_broadcastsi128_si256(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(levels)));
  const std::ptrdiff_t block_bytes = kBlockRows * 4 * n_quads;
  for (std::ptrdiff_t i = 0; i < n_blocks; ++i) {
    for (int q = 0; q < nq; q += kLevelGroup)
      level_group(nq - q < kLevelGroup ? nq - q : kLevelGroup, blocked + i * block_bytes, i,
                  n_quads, table, weights + q, sums + q,
                  std::make_integer_sequence<int, kLevelGroup>{});
  }
}

}  // namespace vecstore::fastscan::avx2
