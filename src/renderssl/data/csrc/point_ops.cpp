// PointNet++ sampling and grouping on the CPU: the C++ twins of renderssl.data.points.farthest_point_sampling
// and renderssl.models.encoders.pointnet2.ball_query / _three_nn (see data/point_ops_compiled.py for the
// choices). Same picks, same neighbour lists, same padding, same tie rules as the torch twins:
//
// - fps: one cloud per task. The cloud's coordinates are copied into x, y, z planes; per pick one pass
//   updates the running min squared distance (d = dx*dx; d += dy*dy; d += dz*dz, the twin's evaluation
//   order; built with -ffp-contract=off so no FMA changes a rounding) into L lane-wise maxima (a loop the
//   compiler vectorises), the picked point is set to -inf (never picked again, even among coincident
//   points), and a second scan finds the FIRST index holding the maximum (ties -> lowest index, as
//   torch.argmax); it stops there, so on average half a pass. A cloud whose points are all picked
//   yields index 0, as argmax over all -inf (only reachable when S > n, which the caller forbids).
// - ball_query: one centre per task: its cloud's points in index order, d2 < r2 (strict, r2 rounded to
//   the points' dtype as torch compares a tensor with a Python float), the first nsample hits, short rows
//   filled with the first hit, no hit -> the cloud's first point. Stops at nsample hits.
// - three_nn: one query per task: a running best-3 over its cloud's points in index order with strict
//   '<' insertion, i.e. the 3 smallest by (d2, index), sorted that way; missing ones (cloud < 3 points)
//   get the cloud's first point and exists = false.
// Torch's intra-op threads (at::parallel_for, so torch.set_num_threads applies) split clouds / queries.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
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
    // min-distance update; the new pick itself gets d = 0 here and -inf just below
    for (int64_t j = 0; j < n; ++j) {
      const T d = sq_dist(xs[j], ys[j], zs[j], cx, cy, cz);
      ds[j] = d < ds[j] ? d : ds[j];
    }
    ds[current] = -inf;
    T lane[LANES];
    for (int l = 0; l < LANES; ++l) lane[l] = -inf;
    for (int64_t j = 0; j < body; j += LANES)
      for (int l = 0; l < LANES; ++l) lane[l] = ds[j + l] > lane[l] ? ds[j + l] : lane[l];
    T best = -inf;
    for (int l = 0; l < LANES; ++l) best = lane[l] > best ? lane[l] : best;
    for (int64_t j = body; j < n; ++j) best = ds[j] > best ? ds[j] : best;
    int64_t arg = 0;  // all -inf: index 0, as argmax
    for (int64_t j = 0; j < n; ++j)
      if (ds[j] == best) { arg = j; break; }
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
    const scalar_t* p = points.data_ptr<scalar_t>();
    const scalar_t* q = centres.data_ptr<scalar_t>();
    const scalar_t r2 = static_cast<scalar_t>(r2_double);
    at::parallel_for(0, M, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t m = lo; m < hi; ++m) {
        const scalar_t qx = q[3 * m], qy = q[3 * m + 1], qz = q[3 * m + 2];
        int64_t* row = o + m * nsample;
        int64_t hits = 0;
        const scalar_t* c = p + 3 * st[m];
        for (int64_t j = 0; j < ct[m] && hits < nsample; ++j)
          if (sq_dist(c[3 * j], c[3 * j + 1], c[3 * j + 2], qx, qy, qz) < r2) row[hits++] = st[m] + j;
        const int64_t fill = hits ? row[0] : st[m];
        for (int64_t h = hits; h < nsample; ++h) row[h] = fill;
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
    const scalar_t* p = known.data_ptr<scalar_t>();
    const scalar_t* q = unknown.data_ptr<scalar_t>();
    const scalar_t inf = std::numeric_limits<scalar_t>::infinity();
    at::parallel_for(0, M, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t m = lo; m < hi; ++m) {
        const scalar_t qx = q[3 * m], qy = q[3 * m + 1], qz = q[3 * m + 2];
        scalar_t d0 = inf, d1 = inf, d2 = inf;
        int64_t j0 = -1, j1 = -1, j2 = -1;
        const scalar_t* c = p + 3 * st[m];
        for (int64_t j = 0; j < ct[m]; ++j) {
          const scalar_t d = sq_dist(c[3 * j], c[3 * j + 1], c[3 * j + 2], qx, qy, qz);
          if (j2 >= 0 && !(d < d2)) continue;  // not among the 3 smallest by (d2, index)
          if (j0 < 0 || d < d0) {
            d2 = d1, j2 = j1, d1 = d0, j1 = j0, d0 = d, j0 = j;
          } else if (j1 < 0 || d < d1) {
            d2 = d1, j2 = j1, d1 = d, j1 = j;
          } else {
            d2 = d, j2 = j;
          }
        }
        const int64_t js[3] = {j0, j1, j2};
        for (int k = 0; k < 3; ++k) {
          o[3 * m + k] = st[m] + (js[k] >= 0 ? js[k] : 0);
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
