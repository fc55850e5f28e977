// PointNet++ sampling and grouping on the CPU: the C++ twins of renderssl.data.points.farthest_point_sampling
// and renderssl.models.encoders.pointnet2.ball_query / _three_nn (see data/point_ops_compiled.py for the
// choices). Same picks, same neighbour lists, same padding, same tie rules as the torch twins:
//
// - fps: one cloud per task. The cloud's coordinates are copied into x, y, z planes; per pick one pass
//   updates the running min squared distance (d = dx*dx; d += dy*dy; d += dz*dz, the twin's evaluation
//   order; built with -ffp-contract=off so no FMA changes a rounding) and, in the same vectorised loop,
//   LANES lane-wise maxima with the first index holding each (strict '>'); the lanes are then merged,
//   largest value first, ties -> the lowest index (torch.argmax's first maximum). The picked point is set
//   to -inf first (never picked again, even among coincident points; min(-inf, d) keeps it). A cloud
//   whose points are all picked yields index 0, as argmax over all -inf.
// - ball_query / three_nn read the points as x, y, z planes (copied once per call) and compute the
//   distances of a block of points (64 / 16) at a time in a vectorised loop.
// - ball_query: one centre per task: its cloud's points in index order, d2 < r2 (strict, r2 rounded to
//   the points' dtype as torch compares a tensor with a Python float), the first nsample hits appended
//   branch-free, short rows filled with the first hit, no hit -> the cloud's first point. Stops at the
//   first block that reaches nsample hits.
// - three_nn: one query per task: a running best-3 over its cloud's points in index order with strict
//   '<' insertion, i.e. the 3 smallest by (d2, index), sorted that way. Per block of 16 points one
//   vectorised loop (#pragma omp simd: GCC 12 left the fixed-length loop scalar without it) computes the
//   distances and a bit mask of those below the current 3rd; only the set bits are offered, in index
//   order (a later offer with an equal value never displaces an earlier one). Missing ones (cloud < 3
//   points) get the cloud's first point and exists = false.
// Torch's intra-op threads (at::parallel_for, so torch.set_num_threads applies) split clouds / queries.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

void check(const torch::Tensor& t, const char* name, int dims) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == dims, name, " must have ", dims, " dimensions");
}

void check_long(const torch::Tensor& t, const char* name) {
  check(t, name, 1);
  TORCH_CHECK(t.scalar_type() == torch::kLong, name, " must be int64");
}

template <typename T>
inline T sq_dist(T px, T py, T pz, T qx, T qy, T qz) {  // the twin's order: ((dx^2 + dy^2) + dz^2)
  T dx = px - qx, dy = py - qy, dz = pz - qz;
  T d = dx * dx;
  d = d + dy * dy;
  d = d + dz * dz;
  return d;
}

constexpr int BLOCK = 64;  // ball query: distances of 64 points at a time in one vectorised loop
constexpr int NN_BLOCK = 16;  // 3-NN: one 512-bit vector of floats; a 32-bit candidate mask (measured: 16 beat 32, 64)

// (N, 3) rows -> x, y, z planes (contiguous loads for the vectorised distance loops)
template <typename T>
void planes(const T* p, int64_t n, std::vector<T>& x, std::vector<T>& y, std::vector<T>& z) {
  x.resize(n), y.resize(n), z.resize(n);
  for (int64_t j = 0; j < n; ++j) x[j] = p[3 * j], y[j] = p[3 * j + 1], z[j] = p[3 * j + 2];
}

// d[l] = squared distance of points j0 + l (l < len) to q, in the twin's order
template <typename T>
inline void block_dist(const T* __restrict xs, const T* __restrict ys, const T* __restrict zs, int64_t j0, int len,
                       T qx, T qy, T qz, T* __restrict d) {
  for (int l = 0; l < len; ++l) d[l] = sq_dist(xs[j0 + l], ys[j0 + l], zs[j0 + l], qx, qy, qz);
}

constexpr int LANES = 16;  // independent running maxima: the update loop vectorises across them

template <typename T>
void fps_cloud(const T* p, int64_t n, int64_t S, int64_t current, int64_t base, int64_t* out) {
  const T inf = std::numeric_limits<T>::infinity();
  std::vector<T> x(n), y(n), z(n), dist(n, inf);
  for (int64_t j = 0; j < n; ++j) x[j] = p[3 * j], y[j] = p[3 * j + 1], z[j] = p[3 * j + 2];
  T* __restrict xs = x.data();
  T* __restrict ys = y.data();
  T* __restrict zs = z.data();
  T* __restrict ds = dist.data();
  const int64_t body = n - n % LANES;
  for (int64_t k = 0; k < S; ++k) {
    out[k] = base + current;
    const T cx = xs[current], cy = ys[current], cz = zs[current];
    ds[current] = -inf;  // before the update: min(-inf, d) keeps it, as the twin's assignment after it
    T lane[LANES];
    int64_t at[LANES];  // lane l: the first index holding its maximum (strict '>')
    for (int l = 0; l < LANES; ++l) lane[l] = -inf, at[l] = 0;
    for (int64_t j = 0; j < body; j += LANES)
      for (int l = 0; l < LANES; ++l) {  // one vectorised pass: min-distance update + lane-wise argmax
        const T d = sq_dist(xs[j + l], ys[j + l], zs[j + l], cx, cy, cz);
        const T v = d < ds[j + l] ? d : ds[j + l];
        ds[j + l] = v;
        const bool gt = v > lane[l];
        lane[l] = gt ? v : lane[l];
        at[l] = gt ? j + l : at[l];
      }
    T best = -inf;
    int64_t arg = 0;  // all -inf: index 0, as argmax
    for (int l = 0; l < LANES; ++l)  // across lanes: the largest value, ties -> the lowest index
      if (lane[l] > best || (lane[l] == best && lane[l] > -inf && at[l] < arg)) best = lane[l], arg = at[l];
    for (int64_t j = body; j < n; ++j) {  // tail: higher indices than every lane's
      const T d = sq_dist(xs[j], ys[j], zs[j], cx, cy, cz);
      ds[j] = d < ds[j] ? d : ds[j];
      if (ds[j] > best) best = ds[j], arg = j;
    }
    current = arg;
  }
}

}  // namespace

// points (N, 3) float/double; counts, samples, first (B,) int64 -> (sum samples,) int64 flat picks.
torch::Tensor fps(torch::Tensor points, torch::Tensor counts, torch::Tensor samples, torch::Tensor first) {
  check(points, "points", 2);
  check_long(counts, "counts");
  check_long(samples, "samples");
  check_long(first, "first");
  const int64_t B = counts.size(0);
  TORCH_CHECK(samples.size(0) == B && first.size(0) == B, "counts, samples and first must have one entry per cloud");
  const int64_t* n_b = counts.data_ptr<int64_t>();
  const int64_t* s_b = samples.data_ptr<int64_t>();
  const int64_t* f_b = first.data_ptr<int64_t>();
  std::vector<int64_t> start(B + 1, 0), out_start(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(s_b[b] >= 0 && s_b[b] <= n_b[b], "samples must lie in [0, count]");
    TORCH_CHECK(s_b[b] == 0 || (f_b[b] >= 0 && f_b[b] < n_b[b]), "first must index its cloud");
    start[b + 1] = start[b] + n_b[b];
    out_start[b + 1] = out_start[b] + s_b[b];
  }
  TORCH_CHECK(start[B] == points.size(0), "counts must sum to the number of points");
  auto out = torch::empty({out_start[B]}, counts.options());
  int64_t* o = out.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "fps", [&] {
    const scalar_t* p = points.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b)
        fps_cloud<scalar_t>(p + 3 * start[b], n_b[b], s_b[b], f_b[b], start[b], o + out_start[b]);
    });
  });
  return out;
}

// Per query m: its cloud's first flat row (qstart) and size (qcount), both (M,) int64.
torch::Tensor ball_query(torch::Tensor points, torch::Tensor centres, torch::Tensor qstart, torch::Tensor qcount,
                         double r2_double, int64_t nsample) {
  check(points, "points", 2);
  check(centres, "centres", 2);
  check_long(qstart, "qstart");
  check_long(qcount, "qcount");
  TORCH_CHECK(centres.scalar_type() == points.scalar_type(), "centres and points must share a dtype");
  TORCH_CHECK(nsample >= 1, "nsample must be >= 1");
  const int64_t M = centres.size(0);
  auto out = torch::empty({M, nsample}, qstart.options());
  int64_t* o = out.data_ptr<int64_t>();
  const int64_t* st = qstart.data_ptr<int64_t>();
  const int64_t* ct = qcount.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "ball_query", [&] {
    std::vector<scalar_t> x, y, z;
    planes(points.data_ptr<scalar_t>(), points.size(0), x, y, z);
    const scalar_t* q = centres.data_ptr<scalar_t>();
    const scalar_t r2 = static_cast<scalar_t>(r2_double);
    at::parallel_for(0, M, 16, [&](int64_t lo, int64_t hi) {
      std::vector<int64_t> found(nsample + BLOCK);  // hits so far; a block may overshoot nsample
      scalar_t d[BLOCK];
      for (int64_t m = lo; m < hi; ++m) {
        const scalar_t qx = q[3 * m], qy = q[3 * m + 1], qz = q[3 * m + 2];
        const int64_t s0 = st[m], n = ct[m];
        int64_t hits = 0;
        for (int64_t j0 = 0; j0 < n && hits < nsample; j0 += BLOCK) {
          const int len = static_cast<int>(std::min<int64_t>(BLOCK, n - j0));
          block_dist(x.data() + s0, y.data() + s0, z.data() + s0, j0, len, qx, qy, qz, d);
          for (int l = 0; l < len; ++l) {  // branch-free append in index order
            found[hits] = s0 + j0 + l;
            hits += d[l] < r2;
          }
        }
        int64_t* row = o + m * nsample;
        const int64_t kept = std::min(hits, nsample);
        for (int64_t h = 0; h < kept; ++h) row[h] = found[h];
        const int64_t fill = hits ? found[0] : s0;  // short rows: the first hit; none: the cloud's first point
        for (int64_t h = kept; h < nsample; ++h) row[h] = fill;
      }
    });
  });
  return out;
}

// -> (idx (M, 3) int64 flat, exists (M, 3) bool)
std::vector<torch::Tensor> three_nn(torch::Tensor known, torch::Tensor unknown, torch::Tensor qstart,
                                    torch::Tensor qcount) {
  check(known, "known", 2);
  check(unknown, "unknown", 2);
  check_long(qstart, "qstart");
  check_long(qcount, "qcount");
  TORCH_CHECK(unknown.scalar_type() == known.scalar_type(), "unknown and known must share a dtype");
  const int64_t M = unknown.size(0);
  auto idx = torch::empty({M, 3}, qstart.options());
  auto exists = torch::empty({M, 3}, qstart.options().dtype(torch::kBool));
  int64_t* o = idx.data_ptr<int64_t>();
  bool* e = exists.data_ptr<bool>();
  const int64_t* st = qstart.data_ptr<int64_t>();
  const int64_t* ct = qcount.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(known.scalar_type(), "three_nn", [&] {
    std::vector<scalar_t> x, y, z;
    planes(known.data_ptr<scalar_t>(), known.size(0), x, y, z);
    const scalar_t* q = unknown.data_ptr<scalar_t>();
    const scalar_t inf = std::numeric_limits<scalar_t>::infinity();
    at::parallel_for(0, M, 16, [&](int64_t lo, int64_t hi) {
      scalar_t dist[NN_BLOCK];
      for (int64_t m = lo; m < hi; ++m) {
        const scalar_t qx = q[3 * m], qy = q[3 * m + 1], qz = q[3 * m + 2];
        const int64_t s0 = st[m], n = ct[m];
        scalar_t d0 = inf, d1 = inf, d2 = inf;
        int64_t j0 = -1, j1 = -1, j2 = -1;
        auto offer = [&](scalar_t d, int64_t j) {  // strict '<': an equal value keeps the earlier (lower) index
          if (j2 >= 0 && !(d < d2)) return;
          if (j0 < 0 || d < d0) {
            d2 = d1, j2 = j1, d1 = d0, j1 = j0, d0 = d, j0 = j;
          } else if (j1 < 0 || d < d1) {
            d2 = d1, j2 = j1, d1 = d, j1 = j;
          } else {
            d2 = d, j2 = j;
          }
        };
        const scalar_t* xs = x.data() + s0;
        const scalar_t* ys = y.data() + s0;
        const scalar_t* zs = z.data() + s0;
        const int64_t body = n - n % NN_BLOCK;
        for (int64_t b0 = 0; b0 < body; b0 += NN_BLOCK) {
          _Pragma("omp simd")
          for (int l = 0; l < NN_BLOCK; ++l) dist[l] = sq_dist(xs[b0 + l], ys[b0 + l], zs[b0 + l], qx, qy, qz);
          const scalar_t thr = d2;
          uint32_t below = 0;  // bit l: dist[l] < the current 3rd (all bits while fewer than 3 are held)
          _Pragma("omp simd reduction(| : below)")
          for (int l = 0; l < NN_BLOCK; ++l) below |= uint32_t(dist[l] < thr) << l;
          if (j2 < 0) below = (1u << NN_BLOCK) - 1;
          for (; below; below &= below - 1) {  // the candidates only, in index order
            const int l = __builtin_ctz(below);
            offer(dist[l], b0 + l);
          }
        }
        for (int64_t j = body; j < n; ++j) offer(sq_dist(xs[j], ys[j], zs[j], qx, qy, qz), j);
        const int64_t js[3] = {j0, j1, j2};
        for (int k = 0; k < 3; ++k) {
          o[3 * m + k] = s0 + (js[k] >= 0 ? js[k] : 0);
          e[3 * m + k] = js[k] >= 0;
        }
      }
    });
  });
  return {idx, exists};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fps", &fps, "farthest point sampling, cloud by cloud");
  m.def("ball_query", &ball_query, "pointnet2 ball query");
  m.def("three_nn", &three_nn, "3 nearest neighbours by (d2, index)");
}
