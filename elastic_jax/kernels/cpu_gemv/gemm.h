// The product of a few rows (R <= 8) by one weight matrix over a range of its columns, the inner loop of the CPU
// decode kernels (gemv.cc). Decoding is bound by reading the weights, so each weight element is loaded once for
// all R rows: the outputs of a panel of columns stay in registers over a block of 16 weight rows (R x C vectors of
// 8 accumulators), the panels of a block read left to right with the next lines of each row prefetched. One row
// (plain decoding) adds four weight rows at a time into outputs kept in L1, the loop that streams fastest for it.
//
// Every output of several rows is acc = fma(x[k], w[k, n], acc) for k = 0, 1, ... in order, whatever R, the panel,
// the block or the thread's share of the columns, so results do not depend on the number of threads.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>

namespace ej {

constexpr int kMaxRows = 8;      // rows per product: each weight row is read once for up to this many input rows
constexpr long kBlockRows = 16;  // weight rows per pass over a panel: 16 streams of consecutive cache lines
constexpr long kPrefetchBytes = 512;  // how far ahead in a weight row to prefetch (measured: 1.2-1.7x at 5 rows)

// One product over `rows` input rows: y[r][n] = x[r] . w[:, n] for n < n, r < rows (w row-major, leading dim n).
struct Segment {
  const float* x[kMaxRows];
  float* y[kMaxRows];
  int rows;
  const float* w;
  long k;
  long n;
};

// Columns [n0, n1) of rows [k0, k1) of s, one column at a time, the outputs in memory.
inline void columns_scalar(const Segment& s, int rows, long k0, long k1, long n0, long n1) {
  for (int r = 0; r < rows; ++r)
    for (long n = n0; n < n1; ++n) {
      float acc = k0 == 0 ? 0.f : s.y[r][n];
      for (long k = k0; k < k1; ++k) acc = std::fma(s.x[r][k], s.w[k * s.n + n], acc);
      s.y[r][n] = acc;
    }
}

// One row: y[n0:n1] = x . w[:, n0:n1], four weight rows at a time added into y (which stays in L1): long runs of
// consecutive weights read best when a single row's arithmetic is cheap.
inline void one_row_columns(const Segment& s, long n0, long n1) {
  const float* x = s.x[0];
  float* y = s.y[0];
  const long ldw = s.n;
  for (long n = n0; n < n1; ++n) y[n] = 0.f;
  long r = 0;
  for (; r + 4 <= s.k; r += 4) {
    const float a0 = x[r], a1 = x[r + 1], a2 = x[r + 2], a3 = x[r + 3];
    const float* w0 = s.w + r * ldw;
    const float* w1 = w0 + ldw;
    const float* w2 = w1 + ldw;
    const float* w3 = w2 + ldw;
#pragma GCC ivdep
    for (long n = n0; n < n1; ++n) y[n] += a0 * w0[n] + a1 * w1[n] + a2 * w2[n] + a3 * w3[n];
  }
  for (; r < s.k; ++r) {
    const float a = x[r];
    const float* wr = s.w + r * ldw;
#pragma GCC ivdep
    for (long n = n0; n < n1; ++n) y[n] += a * wr[n];
  }
}

#if defined(__AVX2__) && defined(__FMA__)
// Columns [n, n + 8C) of rows [k0, k1) for R rows: R x C accumulators, C weight vectors per weight row.
template <int R, int C>
inline void panel(const Segment& s, long k0, long k1, long n) {
  __m256 acc[R][C];  // fully unrolled loops keep these in registers
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = k0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(s.y[r] + n + 8 * c);
  const float* w = s.w + k0 * s.n + n;
  for (long k = k0; k < k1; ++k, w += s.n) {
#pragma GCC unroll 8
    for (int c = 0; c < C; c += 2)  // one line per 16 columns
      _mm_prefetch(reinterpret_cast<const char*>(w + kPrefetchBytes / 4 + 8 * c), _MM_HINT_T0);
    __m256 v[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) v[c] = _mm256_loadu_ps(w + 8 * c);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(s.x[r] + k);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(a, v[c], acc[r][c]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) _mm256_storeu_ps(s.y[r] + n + 8 * c, acc[r][c]);
}

// Panel widths (vectors of 8 columns) that keep R x C accumulators, C weights and a broadcast in the registers
// (32 with AVX-512VL, else 16).
template <int R>
constexpr int panel_vectors() {
#ifdef __AVX512VL__
  return R == 2 ? 8 : R == 3 ? 6 : R == 4 ? 5 : R <= 6 ? 4 : 3;
#else
  return R == 2 ? 4 : R == 3 ? 3 : R <= 6 ? 2 : 1;
#endif
}

template <int R>
void rows_columns(const Segment& s, long n0, long n1) {
  constexpr int C = panel_vectors<R>();
  const long wide = n0 + (n1 - n0) / (8 * C) * (8 * C);
  for (long k0 = 0; k0 < s.k; k0 += kBlockRows) {
    const long k1 = std::min(s.k, k0 + kBlockRows);
    long n = n0;
    for (; n < wide; n += 8 * C) panel<R, C>(s, k0, k1, n);
    for (; n + 8 <= n1; n += 8) panel<R, 1>(s, k0, k1, n);
    columns_scalar(s, R, k0, k1, n, n1);
  }
}
#else
template <int R>
void rows_columns(const Segment& s, long n0, long n1) {
  columns_scalar(s, R, 0, s.k, n0, n1);
}
#endif

// y[r][n0:n1] of segment s.
inline void segment_columns(const Segment& s, long n0, long n1) {
  switch (s.rows) {
    case 1: return one_row_columns(s, n0, n1);
    case 2: return rows_columns<2>(s, n0, n1);
    case 3: return rows_columns<3>(s, n0, n1);
    case 4: return rows_columns<4>(s, n0, n1);
    case 5: return rows_columns<5>(s, n0, n1);
    case 6: return rows_columns<6>(s, n0, n1);
    case 7: return rows_columns<7>(s, n0, n1);
    default: return rows_columns<8>(s, n0, n1);
  }
}

}  // namespace ej
