// FastScan: 4-bit codes scored with 16-entry uint8 lookup tables held in SIMD registers.
//
// A row has n_bytes code bytes; byte b holds nibble position 2b in its low 4 bits and
// position 2b+1 in its high 4 bits. A query's quantized tables give entry [p][v], what
// nibble value v contributes at nibble position p, and a row's sum is
//   sum over b of table[2b][code_b & 15] + table[2b+1][code_b >> 4]   (uint32, exact).
//
// Blocked layout (what block_codes writes and every accumulate reads), row-major within
// groups of four bytes so that a 32-bit lane holds one row: rows are grouped into blocks
// of kBlockRows = 32 (the last block zero-filled past n) and bytes into quads of four
// (n_bytes padded with zero bytes to a multiple of 4). Byte 4g + j of row 32i + r is at
//   i * 32 * padded_bytes + g * 128 + 4r + j.
//
// Kernel tables: (n_quads, 2, 64) uint8; entry [g][h][16j + v] is the table of nibble
// position 2(4g + j) + h (h = 0 low, 1 high nibble) at value v, so a byte's position in its
// lane picks its own 16 entries (vpermb's 6-bit index).
#pragma once

#include <cstddef>
#include <cstdint>

namespace vecstore::fastscan {

constexpr std::ptrdiff_t kBlockRows = 32;
// Queries one accumulate call scores at once, sharing each load of codes.
constexpr int kMaxGroup = 16;

// Code bytes a row occupies in the blocked layout: n_bytes rounded up to a multiple of 4.
inline std::ptrdiff_t padded_bytes(std::ptrdiff_t n_bytes) { return (n_bytes + 3) / 4 * 4; }

// Quads of four code bytes a row occupies: padded_bytes(n_bytes) / 4.
inline std::ptrdiff_t quad_count(std::ptrdiff_t n_bytes) { return (n_bytes + 3) / 4; }

// Blocks of kBlockRows rows that n rows fill, the last one partly.
inline std::ptrdiff_t block_count(std::ptrdiff_t n) { return (n + kBlockRows - 1) / kBlockRows; }

// Bytes of the blocked layout of n rows: ceil(n/32) * 32 * padded_bytes(n_bytes).
std::ptrdiff_t blocked_size(std::ptrdiff_t n, std::ptrdiff_t n_bytes);

// How the scan reads stored codes. With bits 0 a row's first n_bytes stored bytes are its
// code bytes. Otherwise a stored row packs `count` values of `bits` bits (value j at bits
// [j * bits, (j + 1) * bits) of the row's little-endian bit stream), and its code bytes
// hold them at the width the tables read (bits dividing 8 as they are; 3 bits one a
// nibble, 5 to 7 one a byte; value j in byte j / per_byte at bit (j % per_byte) * width),
// zero up to `head` bytes; the code bytes past head are the stored bytes from `tail_from`.
struct Values {
  int bits = 0;
  std::ptrdiff_t count = 0;
  std::ptrdiff_t head = 0;
  std::ptrdiff_t tail_from = 0;
};

// The width code bytes hold `bits`-bit values at (Values): bits where it divides 8, else
// 4 (3 bits) or 8 (5 to 7 bits).
inline int value_width(int bits) { return 8 % bits == 0 ? bits : (bits < 4 ? 4 : 8); }

// Writes the n_bytes code bytes of the stored row `row` to out.
void code_bytes(const uint8_t* row, const Values& values, std::ptrdiff_t n_bytes,
                uint8_t* out);

// Writes the blocked layout of the code bytes of n stored rows (row r at codes + r*stride)
// into out, which holds blocked_size(n, n_bytes) bytes.
void block_codes(const uint8_t* codes, std::ptrdiff_t n, std::ptrdiff_t stride,
                 std::ptrdiff_t n_bytes, const Values& values, uint8_t* out);

// For each of nq <= kMaxGroup queries q, writes sums[q][32*i + r] = the sum of row r of
// block i, for the n_blocks blocks starting at blocked, from tables[q] (kernel tables of
// n_quads quads). All paths give equal sums.
using Accumulate = void (*)(const uint8_t* blocked, std::ptrdiff_t n_blocks,
                            std::ptrdiff_t n_quads, const uint8_t* const* tables, int nq,
                            int32_t* const* sums);

// The level-dot kernel, for codes whose nibble tables are a weight a position times a
// level a nibble value shared by every position (4-bit TurboQuant: coordinate times
// centroid): sums[q][32*i + r] = sum over code bytes 4g + j of
//   levels[low nibble] * weights[q][8g + j] + levels[high nibble] * weights[q][8g + 4 + j]
// (levels (16,) uint8, weights (n_quads, 8) int8 per query), one shared lookup of the
// levels for every query.
using LevelAccumulate = void (*)(const uint8_t* blocked, std::ptrdiff_t n_blocks,
                                 std::ptrdiff_t n_quads, const uint8_t* levels,
                                 const int8_t* const* weights, int nq, int32_t* const* sums);

// The byte level-dot kernel, for code bytes that are 8-bit values whose byte tables are a
// weight a position times a level a value shared by every position:
//   sums[q][32*i + r] = sum over code bytes b of levels[code_b] * weights[q][b]
// (levels (256,) uint8, weights (4 * n_quads,) int8 per query).
namespace scalar {
void byte_level_accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks,
                           std::ptrdiff_t n_quads, const uint8_t* levels,
                           const int8_t* const* weights, int nq, int32_t* const* sums);
void level_accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_quads,
                      const uint8_t* levels, const int8_t* const* weights, int nq,
                      int32_t* const* sums);
void accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_quads,
                const uint8_t* const* tables, int nq, int32_t* const* sums);
}
namespace avx2 {
void accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_quads,
                const uint8_t* const* tables, int nq, int32_t* const* sums);
// Levels of at most 127 (its 16-bit pair sums must not saturate).
void level_accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_quads,
                      const uint8_t* levels, const int8_t* const* weights, int nq,
                      int32_t* const* sums);
}
namespace avx512 {
void accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_quads,
                const uint8_t* const* tables, int nq, int32_t* const* sums);
void level_accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks, std::ptrdiff_t n_quads,
                      const uint8_t* levels, const int8_t* const* weights, int nq,
                      int32_t* const* sums);
void byte_level_accumulate(const uint8_t* blocked, std::ptrdiff_t n_blocks,
                           std::ptrdiff_t n_quads, const uint8_t* levels,
                           const int8_t* const* weights, int nq, int32_t* const* sums);
}

// Whether this CPU can run avx2::accumulate / avx512::accumulate (AVX-512 F, BW, VL,
// VBMI and VNNI).
bool cpu_has_avx2();
bool cpu_has_avx512();

}  // namespace vecstore::fastscan
