// Front-to-back compositing of tiled Gaussians on the CPU, vectorised across the 256 pixels of a tile:
// the compiled twin of renderssl.render.splat_tiles._CompositeTiles (same inputs, outputs, thresholds).
//
// Inputs, per (Gaussian, tile) pair sorted by tile then depth: coef (M, 6) with
// ln(alpha_raw) = coef . [u^2, uv, v^2, u, v, 1] in the tile's pixel frame, the Gaussian index
// pair_gauss (M,); per Gaussian values (G, D); per tile row its first pair and pair count.
//
// Mechanism. A tile's 256 pixels are SIMD lanes (row-major, 16 lanes per pixel row). Per pair, one
// `#pragma omp simd` loop evaluates ln(alpha) from the pixel monomials, exp, the ALPHA_MIN skip, the
// ALPHA_MAX clamp and gsplat's T_MIN termination for every lane at once; per-pixel state (T, the last
// contributing pair, the pair it stopped at) lives in lane arrays and termination is a lane mask
// (k < stop[p]). The colour/depth accumulation is a second simd loop per channel over a (D, 256)
// tile buffer (our choice: D is a runtime size, and this split costs one L1 store/load of the weights
// while keeping every loop a plain 1-D lane loop the compiler vectorises for any D). A tile's walk
// ends when no pixel is live.
// Backward walks each tile's list back from the largest `last` with lane masks (k <= last[p]); it keeps
// gsplat's recovery of the transmittance in front of a Gaussian as T / (1 - alpha) (alpha <= 0.99), with
// one reciprocal per lane shared by T and the carried sum (our choice: nothing per (pair, pixel) is
// stored). The per-pair gradients (6 coefficients, D values) are reductions over the lanes. For D = 4
// (RGB + depth, what the renderer composites) v.g and the value gradients are fused into the lane loop
// (our choice: ~8% of the backward measured; other D keep the per-channel loops).
//
// Skipping. Per pair, the pixel rows that its alpha >= 1/255 ellipse can touch are computed in closed
// form: max over u of ln alpha(u, v) is a concave quadratic g(v) (for a positive-definite conic), and
// rows with g(v) < ln(1/255) - slack cannot pass the ALPHA_MIN test, so they are not evaluated; a pair
// whose ellipse misses the tile costs only this test. The slack (0.01 + 1e-5 x the sum of |term|
// magnitudes) is ~100x the rounding error of evaluating the polynomial, so skipping never changes a
// result. Rows whose pixels have all terminated (forward) or whose largest `last` is below k (backward)
// are trimmed from the range's ends. Non-finite or non-concave coefficients fall back to the whole tile.
//
// exp. An inline exp written for vectorisation (Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2;
// float: Cephes expf's degree-5 minimax polynomial, double: Taylor to degree 13, both ~1 ulp; 2^n built
// in the exponent bits). Our choice over glibc's libmvec (_ZGVeN16v_expf): GCC only declares libmvec's
// vector variants under -ffast-math (glibc's math-vector.h tests __FAST_MATH__), which would break
// NaN/threshold semantics; an inline function also needs no call (libmvec's vector ABI clobbers every
// vector register) and works at every ISA level and in float64. Inputs are clamped to [-80, 88]
// (float) / [-700, 700] (double): below, the result is exp(lo) < ALPHA_MIN, which is skipped anyway,
// and never denormal (with the float clamp at -87, 2^n p fell below 2^-126 and the microcode assist
// for denormal results made the forward ~10x slower); NaN stays NaN. NaN coefficients propagate as in the dense and tiles backends (NaN alpha passes both
// threshold tests and makes T and the output NaN).
//
// ISA. splat_compiled.py builds one extension per ATen CPU capability (x86-64-v4 with 512-bit vectors
// for AVX512, x86-64-v3 for AVX2, the compiler's default otherwise), named after it, so a cache shared
// by machines of different CPUs never loads an instruction set the CPU lacks; no -ffast-math (IEEE
// compares, NaN and division kept). What the compiler made of it (objdump -d of the AVX512 build,
// GCC 12): the forward and backward lane loops run on zmm registers (vfmadd*ps zmm for the monomials
// and the exp polynomial, vcmp*ps / vpcmpd into k mask registers, masked moves and vblendmps for the
// selects, vpslld zmm for 2^n, one vdivps zmm per 16 lanes in the backward; the float64 build the same
// on *pd), with no calls in the kernels (memset/new only, outside the loops). Two source patterns
// kept GCC from vectorising and are avoided: loads through the lambda's captures (the loops read local
// __restrict pointers) and '&&' of comparisons (if-conversion failed, "control flow in loop"; the
// masks are 0/1 products of single-comparison selects).
//
// Threads: tiles are handed out dynamically (an atomic counter) inside one at::parallel_for over the
// intra-op threads (torch.set_num_threads applies); rows arrive sorted by decreasing count, so a static
// split would give the first thread the heaviest tiles. Every pair belongs to one tile, so per-pair
// gradients are written without races and the caller sums them per Gaussian.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

constexpr int TILE = 16;
constexpr int P = TILE * TILE;
constexpr double ALPHA_MAX = 0.99;
constexpr double ALPHA_MIN = 1.0 / 255.0;
constexpr double T_MIN = 1e-4;

#define RSSL_INLINE inline __attribute__((always_inline))

// ---- vectorisable exp -------------------------------------------------------------------------------

RSSL_INLINE float vexp(float x) {
  x = x < -80.0f ? -80.0f : x;  // NaN compares false: stays NaN; -80 keeps 2^n and the result normal
  x = x > 88.0f ? 88.0f : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: t's low mantissa bits hold round(x / ln2)
  const float t = x * 1.44269504088896341f + shifter;
  int32_t tb;
  std::memcpy(&tb, &t, 4);
  const float n = t - shifter;
  float r = x - n * 0.693359375f;  // Cody-Waite: ln2 = C1 + C2, n * C1 exact
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;  // Cephes expf
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t sb = (tb - 0x4B400000 + 127) << 23;  // (n + 127) << 23 = 2^n
  float s;
  std::memcpy(&s, &sb, 4);
  return p * s;
}

RSSL_INLINE double vexp(double x) {
  x = x < -700.0 ? -700.0 : x;
  x = x > 700.0 ? 700.0 : x;
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52
  const double t = x * 1.4426950408889634074 + shifter;
  int64_t tb;
  std::memcpy(&tb, &t, 8);
  const double n = t - shifter;
  double r = x - n * 6.93147180369123816490e-01;  // fdlibm ln2_hi (n * hi exact for |n| < 2^11)
  r = r - n * 1.90821492927058770002e-10;         // ln2_lo
  double p = 1.0 / 6227020800.0;                  // Taylor 1/13! ... 1/2!, |r| <= ln2/2: error < 1e-17
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r * r + r + 1.0;
  const int64_t sb = (tb - int64_t(0x4338000000000000LL) + 1023) << 52;
  double s;
  std::memcpy(&s, &sb, 8);
  return p * s;
}

// ---- per-tile constants and pair skipping ------------------------------------------------------------

template <typename scalar_t>
struct Monomials {  // the tile's pixel centres as lane arrays, row-major: p = 16 v_row + u_col
  alignas(64) scalar_t uu[P], uv[P], vv[P], u[P], v[P];
  Monomials() {
    for (int p = 0; p < P; ++p) {
      const scalar_t x = scalar_t(p % TILE) + scalar_t(0.5), y = scalar_t(p / TILE) + scalar_t(0.5);
      uu[p] = x * x, uv[p] = x * y, vv[p] = y * y, u[p] = x, v[p] = y;
    }
  }
};

template <typename scalar_t>
const Monomials<scalar_t>& monomials() {
  static const Monomials<scalar_t> m;
  return m;
}

// Pixel rows [lo, hi] (inclusive) of the tile where alpha >= ALPHA_MIN is possible; lo > hi: none.
template <typename scalar_t>
inline void ellipse_rows(const scalar_t* c, int& lo, int& hi) {
  lo = 0, hi = TILE - 1;
  const double c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3], c4 = c[4], c5 = c[5];
  if (!(c0 < 0)) return;  // not concave in u (or NaN): whole tile
  // g(v) = max_u ln alpha(u, v) = a v^2 + b v + e
  const double a = c2 - c1 * c1 / (4 * c0), b = c4 - c1 * c3 / (2 * c0), e = c5 - c3 * c3 / (4 * c0);
  if (!(a < 0) || !std::isfinite(b) || !std::isfinite(e)) return;
  const double mag = 240.25 * (std::fabs(c0) + std::fabs(c1) + std::fabs(c2)) + 15.5 * (std::fabs(c3) + std::fabs(c4)) + std::fabs(c5);
  const double L = std::log(ALPHA_MIN) - 0.01 - 1e-5 * mag;
  const double disc = b * b - 4 * a * (e - L);
  if (disc < 0) {  // g(v) < L everywhere
    lo = 1, hi = 0;
    return;
  }
  const double vm = -b / (2 * a), h = std::sqrt(disc) / (-2 * a);
  const double flo = std::ceil(vm - h - 0.5), fhi = std::floor(vm + h - 0.5);  // rows with j + 0.5 in [vm-h, vm+h]
  if (fhi < 0 || flo > TILE - 1) {
    lo = 1, hi = 0;
    return;
  }
  lo = flo < 0 ? 0 : int(flo);
  hi = fhi > TILE - 1 ? TILE - 1 : int(fhi);
}

// Dynamic tile scheduling over the intra-op threads (see the header); fn(row, scratch) per tile row.
template <typename Fn>
void for_each_row(int64_t rows, Fn fn) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  at::parallel_for(0, workers, 1, [&](int64_t b, int64_t e) {
    for (int64_t w = b; w < e; ++w)
      for (int64_t r = next.fetch_add(1); r < rows; r = next.fetch_add(1)) fn(r);
  });
}

// ---- forward ----------------------------------------------------------------------------------------

template <typename scalar_t>
void forward_rows(const scalar_t* coef, const int64_t* pair_gauss, const scalar_t* values, const int64_t* row_start,
                  const int64_t* row_count, int64_t rows, int64_t D, scalar_t* out, scalar_t* T_final, int64_t* last,
                  int64_t* visited) {
  using index_t = std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t>;  // lane-width integers
  const Monomials<scalar_t>* mono = &monomials<scalar_t>();
  for_each_row(rows, [&](int64_t r) {
    // Locals, not captures: the vectoriser cannot hoist loads through the closure (it may alias the stores).
    const scalar_t amin = scalar_t(ALPHA_MIN), amax = scalar_t(ALPHA_MAX), tmin = scalar_t(T_MIN);
    const scalar_t *__restrict muu = mono->uu, *__restrict muv = mono->uv, *__restrict mvv = mono->vv;
    const scalar_t *__restrict mu = mono->u, *__restrict mv = mono->v;
    alignas(64) scalar_t T[P], w[P];
    alignas(64) index_t last_k[P], stop[P];
    std::vector<scalar_t> acc(size_t(D) * P, scalar_t(0));  // (D, P)
    const int64_t start = row_start[r], count = row_count[r];
    const index_t never = std::numeric_limits<index_t>::max();
    for (int p = 0; p < P; ++p) T[p] = 1, last_k[p] = -1, stop[p] = never;
    int row_live[TILE];  // live pixels per pixel row
    for (int j = 0; j < TILE; ++j) row_live[j] = TILE;
    int live = P;
    for (int64_t k = 0; k < count && live > 0; ++k) {
      const int64_t i = start + k;
      const scalar_t* c = coef + 6 * i;
      int lo, hi;
      ellipse_rows(c, lo, hi);
      while (lo <= hi && row_live[lo] == 0) ++lo;
      while (hi >= lo && row_live[hi] == 0) --hi;
      if (lo > hi) continue;
      const int p0 = lo * TILE, p1 = (hi + 1) * TILE;
      const scalar_t c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3], c4 = c[4], c5 = c[5];
      const index_t kk = index_t(k);
      int stopped = 0, used = 0;
#pragma omp simd reduction(+ : stopped, used)
      for (int p = p0; p < p1; ++p) {
        const scalar_t la = c0 * muu[p] + c1 * muv[p] + c2 * mvv[p] + c3 * mu[p] + c4 * mv[p] + c5;  // ln alpha_raw
        const scalar_t raw = vexp(la);
        const scalar_t alpha = raw > amax ? amax : raw;  // NaN stays NaN, as in dense/tiles
        const scalar_t Tp = T[p];
        const scalar_t next_T = Tp * (1 - alpha);
        // Lane masks as 0/1 values from one comparison each (see the note in the backward loop).
        const scalar_t live = kk < stop[p] ? scalar_t(1) : scalar_t(0);
        const scalar_t big = raw < amin ? scalar_t(0) : scalar_t(1);  // NaN counts as big: it propagates
        const scalar_t deep = next_T <= tmin ? scalar_t(1) : scalar_t(0);
        const bool term = live * big * deep != 0;        // gsplat: stop before T would reach T_MIN
        const bool ok = live * big * (1 - deep) != 0;    // contributes
        const scalar_t wp = alpha * Tp;
        stop[p] = term ? kk : stop[p];
        w[p] = ok ? wp : scalar_t(0);
        T[p] = ok ? next_T : Tp;
        last_k[p] = ok ? kk : last_k[p];
        stopped += term;
        used += ok;
      }
      if (used) {
        const scalar_t* val = values + pair_gauss[i] * D;
        for (int64_t d = 0; d < D; ++d) {
          const scalar_t vd = val[d];
          scalar_t* a = acc.data() + d * P;
#pragma omp simd
          for (int p = p0; p < p1; ++p) a[p] += w[p] * vd;
        }
      }
      if (stopped) {
        live -= stopped;
        for (int j = lo; j <= hi; ++j) {
          int n = 0;
          for (int q = j * TILE; q < (j + 1) * TILE; ++q) n += stop[q] == never;
          row_live[j] = n;
        }
      }
    }
    int64_t n_visited = 0;  // pairs the per-pixel algorithm visits: up to and including the one it stops at
    for (int p = 0; p < P; ++p) {
      n_visited += stop[p] == never ? count : int64_t(stop[p]) + 1;
      T_final[r * P + p] = T[p];
      last[r * P + p] = last_k[p];
      for (int64_t d = 0; d < D; ++d) out[(r * P + p) * D + d] = acc[d * P + p];
    }
    visited[r] = n_visited;
  });
}

// ---- backward ---------------------------------------------------------------------------------------

template <typename scalar_t>
void backward_rows(const scalar_t* coef, const int64_t* pair_gauss, const scalar_t* values, const int64_t* row_start,
                   const scalar_t* T_final, const int64_t* last, const scalar_t* g_out, const scalar_t* g_T, int64_t rows,
                   int64_t D, scalar_t* g_coef, scalar_t* g_pair_values) {
  using index_t = std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t>;
  const Monomials<scalar_t>* mono = &monomials<scalar_t>();
  for_each_row(rows, [&](int64_t r) {
    const scalar_t amin = scalar_t(ALPHA_MIN), amax = scalar_t(ALPHA_MAX);
    const scalar_t *__restrict muu = mono->uu, *__restrict muv = mono->uv, *__restrict mvv = mono->vv;
    const scalar_t *__restrict mu = mono->u, *__restrict mv = mono->v;
    alignas(64) scalar_t T[P], after[P], vg[P], w[P];
    alignas(64) index_t last_k[P];
    std::vector<scalar_t> go(size_t(D) * P);  // (D, P): this tile's output gradient, lane-major
    const int64_t start = row_start[r];
    int row_last[TILE];  // largest `last` per pixel row
    int kmax = -1;
    for (int j = 0; j < TILE; ++j) row_last[j] = -1;
    for (int p = 0; p < P; ++p) {
      const int64_t q = r * P + p;
      T[p] = T_final[q];
      after[p] = g_T[q] * T_final[q];  // sum_{j>k} w_j v_j.g + g_T T_final
      last_k[p] = index_t(last[q]);
      row_last[p / TILE] = std::max<int>(row_last[p / TILE], int(last[q]));
      for (int64_t d = 0; d < D; ++d) go[d * P + p] = g_out[q * D + d];
    }
    for (int j = 0; j < TILE; ++j) kmax = std::max(kmax, row_last[j]);
    for (int64_t k = kmax; k >= 0; --k) {
      const int64_t i = start + k;
      const scalar_t* c = coef + 6 * i;
      int lo, hi;
      ellipse_rows(c, lo, hi);
      while (lo <= hi && row_last[lo] < k) ++lo;
      while (hi >= lo && row_last[hi] < k) --hi;
      if (lo > hi) continue;  // g_coef / g_pair_values of this pair stay 0
      const int p0 = lo * TILE, p1 = (hi + 1) * TILE;
      const scalar_t* val = values + pair_gauss[i] * D;
      const scalar_t c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3], c4 = c[4], c5 = c[5];
      const index_t kk = index_t(k);
      scalar_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0;
      scalar_t* gv = g_pair_values + i * D;
      if (D == 4) {  // RGB + depth, the renderer's case: v.g and the value gradients fused into the lane loop
        const scalar_t v0 = val[0], v1 = val[1], v2 = val[2], v3 = val[3];
        const scalar_t *__restrict g0 = go.data(), *__restrict g1 = g0 + P, *__restrict g2 = g0 + 2 * P, *__restrict g3 = g0 + 3 * P;
        scalar_t t0 = 0, t1 = 0, t2 = 0, t3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, t0, t1, t2, t3)
        for (int p = p0; p < p1; ++p) {
          const scalar_t la = c0 * muu[p] + c1 * muv[p] + c2 * mvv[p] + c3 * mu[p] + c4 * mv[p] + c5;
          const scalar_t raw = vexp(la);
          // (the same lane arithmetic as the loop for any D below, which comments it)
          const scalar_t live = kk <= last_k[p] ? scalar_t(1) : scalar_t(0);
          const scalar_t big = raw < amin ? scalar_t(0) : scalar_t(1);
          const scalar_t unclamped = raw < amax ? scalar_t(1) : scalar_t(0);  // the clamp has zero slope
          const bool act = live * big != 0;
          const bool grad = live * big * unclamped != 0;
          const scalar_t alpha = raw > amax ? amax : raw;
          const scalar_t inv = 1 / (1 - alpha);
          const scalar_t Tb = T[p] * inv;  // transmittance in front of this Gaussian
          const scalar_t wp = alpha * Tb;
          const scalar_t vgp = v0 * g0[p] + v1 * g1[p] + v2 * g2[p] + v3 * g3[p], ap = after[p];
          const scalar_t gl = (Tb * vgp - ap * inv) * raw;  // d alpha / d ln alpha = alpha
          const scalar_t an = ap + wp * vgp;
          const scalar_t g_log = grad ? gl : scalar_t(0);
          s0 += g_log * muu[p], s1 += g_log * muv[p], s2 += g_log * mvv[p];
          s3 += g_log * mu[p], s4 += g_log * mv[p], s5 += g_log;
          const scalar_t ws = act ? wp : scalar_t(0);
          t0 += ws * g0[p], t1 += ws * g1[p], t2 += ws * g2[p], t3 += ws * g3[p];
          after[p] = act ? an : ap;
          T[p] = act ? Tb : T[p];
        }
        gv[0] = t0, gv[1] = t1, gv[2] = t2, gv[3] = t3;
      } else {  // any D: v.g and the value gradients as separate lane loops per channel
#pragma omp simd
        for (int p = p0; p < p1; ++p) vg[p] = 0;
        for (int64_t d = 0; d < D; ++d) {
          const scalar_t vd = val[d];
          const scalar_t* g = go.data() + d * P;
#pragma omp simd
          for (int p = p0; p < p1; ++p) vg[p] += vd * g[p];  // v_k . g_p
        }
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5)
        for (int p = p0; p < p1; ++p) {
          const scalar_t la = c0 * muu[p] + c1 * muv[p] + c2 * mvv[p] + c3 * mu[p] + c4 * mv[p] + c5;
          const scalar_t raw = vexp(la);
          // Lane masks as 0/1 values from one comparison each: GCC 12 left '&&' of comparisons as branches
          // here ("control flow in loop") and did not vectorise; products of selects it does.
          const scalar_t live = kk <= last_k[p] ? scalar_t(1) : scalar_t(0);
          const scalar_t big = raw < amin ? scalar_t(0) : scalar_t(1);
          const scalar_t unclamped = raw < amax ? scalar_t(1) : scalar_t(0);  // the clamp has zero slope
          const bool act = live * big != 0;
          const bool grad = live * big * unclamped != 0;
          const scalar_t alpha = raw > amax ? amax : raw;
          const scalar_t inv = 1 / (1 - alpha);
          const scalar_t Tb = T[p] * inv;  // transmittance in front of this Gaussian
          const scalar_t wp = alpha * Tb;
          const scalar_t vgp = vg[p], ap = after[p];
          const scalar_t gl = (Tb * vgp - ap * inv) * raw;  // d alpha / d ln alpha = alpha
          const scalar_t an = ap + wp * vgp;
          // Every value is computed for every lane, then selected (no arithmetic inside the selects).
          const scalar_t g_log = grad ? gl : scalar_t(0);
          s0 += g_log * muu[p], s1 += g_log * muv[p], s2 += g_log * mvv[p];
          s3 += g_log * mu[p], s4 += g_log * mv[p], s5 += g_log;
          w[p] = act ? wp : scalar_t(0);
          after[p] = act ? an : ap;
          T[p] = act ? Tb : T[p];
        }
        for (int64_t d = 0; d < D; ++d) {
          const scalar_t* g = go.data() + d * P;
          scalar_t s = 0;
#pragma omp simd reduction(+ : s)
          for (int p = p0; p < p1; ++p) s += w[p] * g[p];
          gv[d] = s;
        }
      }
      scalar_t* gc = g_coef + 6 * i;
      gc[0] = s0, gc[1] = s1, gc[2] = s2, gc[3] = s3, gc[4] = s4, gc[5] = s5;
    }
  });
}

void check(const torch::Tensor& t, const char* name, int dims) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == dims, name, " must have ", dims, " dimensions");
}

}  // namespace

std::vector<torch::Tensor> composite_forward(torch::Tensor coef, torch::Tensor pair_gauss, torch::Tensor values,
                                             torch::Tensor row_start, torch::Tensor row_count) {
  check(coef, "coef", 2), check(pair_gauss, "pair_gauss", 1), check(values, "values", 2);
  check(row_start, "row_start", 1), check(row_count, "row_count", 1);
  TORCH_CHECK(coef.scalar_type() == values.scalar_type(), "coef and values must have one dtype");
  const int64_t rows = row_start.size(0), D = values.size(1);
  auto out = torch::empty({rows, P, D}, values.options());
  auto T_final = torch::empty({rows, P}, values.options());
  auto last = torch::empty({rows, P}, row_start.options());
  auto visited = torch::empty({rows}, row_start.options());
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "composite_forward", [&] {
    forward_rows<scalar_t>(coef.data_ptr<scalar_t>(), pair_gauss.data_ptr<int64_t>(), values.data_ptr<scalar_t>(),
                           row_start.data_ptr<int64_t>(), row_count.data_ptr<int64_t>(), rows, D, out.data_ptr<scalar_t>(),
                           T_final.data_ptr<scalar_t>(), last.data_ptr<int64_t>(), visited.data_ptr<int64_t>());
  });
  return {out, T_final, last, visited};
}

std::vector<torch::Tensor> composite_backward(torch::Tensor coef, torch::Tensor pair_gauss, torch::Tensor values,
                                              torch::Tensor row_start, torch::Tensor T_final, torch::Tensor last,
                                              torch::Tensor g_out, torch::Tensor g_T) {
  check(coef, "coef", 2), check(g_out, "g_out", 3), check(g_T, "g_T", 2);
  check(T_final, "T_final", 2), check(last, "last", 2);
  const int64_t rows = row_start.size(0), D = values.size(1);
  auto g_coef = torch::zeros_like(coef);
  auto g_pair_values = torch::zeros({coef.size(0), D}, values.options());
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "composite_backward", [&] {
    backward_rows<scalar_t>(coef.data_ptr<scalar_t>(), pair_gauss.data_ptr<int64_t>(), values.data_ptr<scalar_t>(),
                            row_start.data_ptr<int64_t>(), T_final.data_ptr<scalar_t>(), last.data_ptr<int64_t>(),
                            g_out.data_ptr<scalar_t>(), g_T.data_ptr<scalar_t>(), rows, D, g_coef.data_ptr<scalar_t>(),
                            g_pair_values.data_ptr<scalar_t>());
  });
  return {g_coef, g_pair_values};
}

// Per pair, the first and last pixel row the kernel evaluates (first > last: none), for the skipping test.
torch::Tensor ellipse_rows_of(torch::Tensor coef) {
  check(coef, "coef", 2);
  auto rows = torch::empty({coef.size(0), 2}, coef.options().dtype(torch::kLong));
  int64_t* r = rows.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(coef.scalar_type(), "ellipse_rows", [&] {
    const scalar_t* c = coef.data_ptr<scalar_t>();
    for (int64_t i = 0; i < coef.size(0); ++i) {
      int lo, hi;
      ellipse_rows(c + 6 * i, lo, hi);
      r[2 * i] = lo, r[2 * i + 1] = hi;
    }
  });
  return rows;
}

// The kernel's exp applied element-wise (for its accuracy test).
template <typename scalar_t>
void exp_loop(const scalar_t* a, scalar_t* b, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) b[j] = vexp(a[j]);
}

torch::Tensor vector_exp(torch::Tensor x) {
  check(x, "x", 1);
  auto y = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "vector_exp",
                             [&] { exp_loop<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), x.numel()); });
  return y;
}

// ns per element of the kernel's exp over an in-cache float32 array of n elements, repeated; one thread.
double exp_ns_per_element(int64_t n, int64_t repeats) {
  TORCH_CHECK(n > 0 && repeats > 0, "n and repeats must be > 0");
  std::vector<float> a(n), b(n);
  for (int64_t j = 0; j < n; ++j) a[j] = -8.0f * float(j) / float(n);  // ln alpha over the useful range
  float* pa = a.data();
  float* pb = b.data();
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t rep = 0; rep < repeats; ++rep) {
    exp_loop<float>(pa, pb, n);
    asm volatile("" : : "r"(pb), "r"(pa) : "memory");  // keep every repetition
  }
  const auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / double(n * repeats);
}

// The instruction set the compiler targeted for this build.
std::string simd_target() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__)
  return "avx2";
#elif defined(__SSE2__)
  return "sse2";
#elif defined(__ARM_NEON)
  return "neon";
#else
  return "scalar";
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("composite_forward", &composite_forward, "tiled Gaussian compositing, forward (CPU): out, T, last, visited");
  m.def("composite_backward", &composite_backward, "tiled Gaussian compositing, backward (CPU)");
  m.def("ellipse_rows", &ellipse_rows_of, "per pair, the pixel rows its alpha >= 1/255 ellipse may touch");
  m.def("vector_exp", &vector_exp, "the kernel's vectorised exp, element-wise");
  m.def("exp_ns_per_element", &exp_ns_per_element, "ns per element of the kernel's exp, in cache, one thread");
  m.def("simd_target", &simd_target, "instruction set the build targets");
}
