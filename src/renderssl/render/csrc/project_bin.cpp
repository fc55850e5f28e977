// Projection, culling, tile binning and per-pair log-alpha coefficients of the compiled splatting
// backend: the C++ twins of renderssl.render.gaussians.project_gaussians (EWA projection, eps2d blur,
// culling, alpha >= 1/255 extent), renderssl.render.splat_tiles._bin_to_tiles (pairs sorted by tile then
// depth, front-most max_per_tile kept) and splat_tiles.log_alpha_coefficients, with hand-written backwards.
//
// Mechanism (see render/splat_prepare_compiled.py for the choices):
// - project_forward / project_backward: one pass per Gaussian (b, n) over its V cameras; the backward
//   recomputes the forward's intermediates in registers and applies the chain rule by hand (camera
//   parameters get no gradient), summing over the cameras in a fixed order (deterministic, race free).
// - bin_tiles: per Gaussian its tile rectangle; per image (b, v) its valid Gaussians sorted by
//   (depth, flat index) with std::sort; per-tile counts; a global exclusive prefix of the kept counts;
//   then a counting-sort fill that walks each image's Gaussians front to back, so every tile's list
//   comes out in (depth, index) order without a per-tile sort, and stops a tile at max_per_tile.
//   pair_slot maps each (Gaussian, tile) slot in Gaussian-major order to its sorted pair (or -1 when
//   dropped) so the coefficient backward sums a Gaussian's pairs without scatter races.
// - pair_coefficients(_backward): per pair / per Gaussian.
// - untile_forward / untile_backward: composited tile rows -> (B*V, H*W, C) images and back, one pass
//   per image row / tile row (replaces index_copy into the full tile grid + permute + crop).
// Torch's intra-op threads (at::parallel_for, OpenMP in torch's builds, so torch.set_num_threads
// applies) split Gaussians, images and pairs.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace {

constexpr int TILE = 16;
constexpr double ALPHA_MIN = 1.0 / 255.0;
#define ALWAYS_INLINE inline __attribute__((always_inline))  // small per-Gaussian helpers stay in registers

void check(const torch::Tensor& t, const char* name, int dims) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == dims, name, " must have ", dims, " dimensions");
}

// ------------------------------------------------------------------------------------------------
// Projection
// ------------------------------------------------------------------------------------------------

struct Settings {
  double width, height, near_plane, far_plane, eps2d;
  bool ortho, antialiased;
};

// Rotation R (row-major) of the normalised quaternion q = (w, x, y, z) / max(|q|, 1e-12).
template <typename T>
ALWAYS_INLINE void quat_rotmat(const T* q_raw, T* qn, T& norm, T* R) {
  norm = std::sqrt(q_raw[0] * q_raw[0] + q_raw[1] * q_raw[1] + q_raw[2] * q_raw[2] + q_raw[3] * q_raw[3]);
  const T inv = T(1) / std::max(norm, T(1e-12));
  for (int i = 0; i < 4; ++i) qn[i] = q_raw[i] * inv;
  const T w = qn[0], x = qn[1], y = qn[2], z = qn[3];
  R[0] = 1 - 2 * (y * y + z * z), R[1] = 2 * (x * y - w * z), R[2] = 2 * (x * z + w * y);
  R[3] = 2 * (x * y + w * z), R[4] = 1 - 2 * (x * x + z * z), R[5] = 2 * (y * z - w * x);
  R[6] = 2 * (x * z - w * y), R[7] = 2 * (y * z + w * x), R[8] = 1 - 2 * (x * x + y * y);
}

// World covariance Sigma = (R S)(R S)^T, M = R diag(s).
template <typename T>
ALWAYS_INLINE void covariance(const T* R, const T* s, T* M, T* Sig) {
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) M[3 * i + j] = R[3 * i + j] * s[j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) Sig[3 * i + j] = M[3 * i] * M[3 * j] + M[3 * i + 1] * M[3 * j + 1] + M[3 * i + 2] * M[3 * j + 2];
}

// Everything the projection of one Gaussian into one camera computes, kept for the backward.
template <typename T>
struct CamTerms {
  T p[3];        // camera-frame mean
  T izs;         // 1 / z_safe
  T Sc[9];       // camera covariance W Sigma W^T
  T J[6];        // 2x3 Jacobian
  T zs;          // z_safe
  T ux, uy;      // x / z_safe, y / z_safe before the clamp
  T lxn, lxp, lyn, lyp;
  T tx, ty;
  T a, b, c;     // cov2d before the blur
  T det_orig, det, det_safe;
  bool valid_det;  // z in (near, far) and det > 0
};

template <typename T>
ALWAYS_INLINE void project_one(const T* mean, const T* Sig, const T* w2c, const T* K, const T* lim, const Settings& s, CamTerms<T>& t) {
  const T fx = K[0], fy = K[4], cx = K[2], cy = K[5];
  for (int i = 0; i < 3; ++i) t.p[i] = w2c[4 * i] * mean[0] + w2c[4 * i + 1] * mean[1] + w2c[4 * i + 2] * mean[2] + w2c[4 * i + 3];
  T WS[9];  // W Sigma
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) WS[3 * i + j] = w2c[4 * i] * Sig[j] + w2c[4 * i + 1] * Sig[3 + j] + w2c[4 * i + 2] * Sig[6 + j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) t.Sc[3 * i + j] = WS[3 * i] * w2c[4 * j] + WS[3 * i + 1] * w2c[4 * j + 1] + WS[3 * i + 2] * w2c[4 * j + 2];
  const T x = t.p[0], y = t.p[1], z = t.p[2];
  if (!s.ortho) {
    t.zs = z > 0 ? z : T(1);
    t.izs = T(1) / t.zs;
    t.lxp = lim[1], t.lxn = lim[0], t.lyp = lim[3], t.lyn = lim[2];
    t.ux = x * t.izs, t.uy = y * t.izs;
    t.tx = t.zs * std::min(std::max(t.ux, -t.lxn), t.lxp);
    t.ty = t.zs * std::min(std::max(t.uy, -t.lyn), t.lyp);
    t.J[0] = fx * t.izs, t.J[1] = 0, t.J[2] = -fx * t.tx * (t.izs * t.izs);
    t.J[3] = 0, t.J[4] = fy * t.izs, t.J[5] = -fy * t.ty * (t.izs * t.izs);
  } else {
    t.zs = 1, t.izs = 1;
    t.J[0] = fx, t.J[1] = 0, t.J[2] = 0, t.J[3] = 0, t.J[4] = fy, t.J[5] = 0;
  }
  T JS[6];  // J Sigma_c
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) JS[3 * i + j] = t.J[3 * i] * t.Sc[j] + t.J[3 * i + 1] * t.Sc[3 + j] + t.J[3 * i + 2] * t.Sc[6 + j];
  t.a = JS[0] * t.J[0] + JS[1] * t.J[1] + JS[2] * t.J[2];
  t.b = JS[0] * t.J[3] + JS[1] * t.J[4] + JS[2] * t.J[5];
  t.c = JS[3] * t.J[3] + JS[4] * t.J[4] + JS[5] * t.J[5];
  t.det_orig = t.a * t.c - t.b * t.b;
  const T ab = t.a + T(s.eps2d), cb = t.c + T(s.eps2d);
  t.det = ab * cb - t.b * t.b;
  t.valid_det = z > T(s.near_plane) && z < T(s.far_plane) && t.det > 0;
  t.det_safe = t.valid_det ? t.det : T(1);
}

// Per camera the pinhole field-of-view clamp limits (x negative, x positive, y negative, y positive) of
// tx/z and ty/z, 1.3x the field of view as gsplat (computed once per camera, not per Gaussian).
template <typename T>
std::vector<T> fov_limits(const T* K, int64_t cams, const Settings& s) {
  std::vector<T> lim(4 * cams);
  const T W = T(s.width), H = T(s.height);
  for (int64_t c = 0; c < cams; ++c) {
    const T fx = K[9 * c], fy = K[9 * c + 4], cx = K[9 * c + 2], cy = K[9 * c + 5];
    lim[4 * c] = cx / fx + T(0.3) * (T(0.5) * W / fx);
    lim[4 * c + 1] = (W - cx) / fx + T(0.3) * (T(0.5) * W / fx);
    lim[4 * c + 2] = cy / fy + T(0.3) * (T(0.5) * H / fy);
    lim[4 * c + 3] = (H - cy) / fy + T(0.3) * (T(0.5) * H / fy);
  }
  return lim;
}

template <typename T>
void project_forward_impl(const T* means, const T* quats, const T* scales, const T* opac, const T* w2c, const T* K,
                          int64_t B, int64_t V, int64_t N, const Settings& s, T* means2d, T* conics, T* depths,
                          T* opac_out, T* extent, bool* valid) {
  const std::vector<T> lim = fov_limits(K, B * V, s);
  at::parallel_for(0, B * N, 256, [&](int64_t begin, int64_t end) {
    for (int64_t bn = begin; bn < end; ++bn) {
      const int64_t b = bn / N, n = bn % N;
      T qn[4], norm, R[9], M[9], Sig[9];
      quat_rotmat(quats + 4 * bn, qn, norm, R);
      covariance(R, scales + 3 * bn, M, Sig);
      for (int64_t v = 0; v < V; ++v) {
        const int64_t bv = b * V + v, g = bv * N + n;
        const T* Kc = K + 9 * bv;
        CamTerms<T> t;
        project_one(means + 3 * bn, Sig, w2c + 16 * bv, Kc, lim.data() + 4 * bv, s, t);
        const T fx = Kc[0], fy = Kc[4], cx = Kc[2], cy = Kc[5];
        T mx, my;
        if (!s.ortho) mx = fx * t.p[0] * t.izs + cx, my = fy * t.p[1] * t.izs + cy;
        else mx = fx * t.p[0] + cx, my = fy * t.p[1] + cy;
        const T ab = t.a + T(s.eps2d), cb = t.c + T(s.eps2d);
        means2d[2 * g] = mx, means2d[2 * g + 1] = my;
        const T idet = T(1) / t.det_safe;
        conics[3 * g] = cb * idet, conics[3 * g + 1] = -t.b * idet, conics[3 * g + 2] = ab * idet;
        depths[g] = t.p[2];
        T o = opac[bn];
        if (s.antialiased) o = o * std::sqrt(std::max(t.det_orig / t.det_safe, T(0)));
        opac_out[g] = o;
        // alpha >= 1/255 needs d^T Sigma^-1 d <= 2 ln(255 o): the ellipse's bounding box.
        const T q_max = T(2) * std::log(std::max(o * T(255), T(1)));
        const T ex = std::sqrt(q_max * std::max(ab, T(0))), ey = std::sqrt(q_max * std::max(cb, T(0)));
        extent[2 * g] = ex, extent[2 * g + 1] = ey;
        const bool on_screen = (mx + ex) > 0 && (my + ey) > 0 && (mx - ex) < T(s.width) && (my - ey) < T(s.height);
        valid[g] = t.valid_det && on_screen && q_max > 0;
      }
    }
  });
}

// torch.maximum / torch.minimum backward: the gradient goes to the larger (smaller) input, half each on a tie.
template <typename T>
ALWAYS_INLINE T clamp_grad(T u, T lo, T hi) {
  const T m = std::max(u, lo);
  const T g_max = u > lo ? T(1) : (u == lo ? T(0.5) : T(0));
  const T g_min = m < hi ? T(1) : (m == hi ? T(0.5) : T(0));
  return g_max * g_min;
}

template <typename T>
void project_backward_impl(const T* means, const T* quats, const T* scales, const T* opac, const T* w2c, const T* K,
                           int64_t B, int64_t V, int64_t N, const Settings& s, const T* g_means2d, const T* g_conics,
                           const T* g_depths, const T* g_opac_out, T* g_means, T* g_quats, T* g_scales, T* g_opac) {
  const std::vector<T> lim = fov_limits(K, B * V, s);
  at::parallel_for(0, B * N, 256, [&](int64_t begin, int64_t end) {
    for (int64_t bn = begin; bn < end; ++bn) {
      const int64_t b = bn / N, n = bn % N;
      const T* sc = scales + 3 * bn;
      T qn[4], norm, R[9], M[9], Sig[9];
      quat_rotmat(quats + 4 * bn, qn, norm, R);
      covariance(R, sc, M, Sig);
      T gSig[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0}, gmu[3] = {0, 0, 0}, go_sum = 0;
      for (int64_t v = 0; v < V; ++v) {
        const int64_t bv = b * V + v, g = bv * N + n;
        const T* Wm = w2c + 16 * bv;
        const T* Kc = K + 9 * bv;
        const T fx = Kc[0], fy = Kc[4];
        CamTerms<T> t;
        project_one(means + 3 * bn, Sig, Wm, Kc, lim.data() + 4 * bv, s, t);
        const T ab = t.a + T(s.eps2d), cb = t.c + T(s.eps2d), ds = t.det_safe;
        // conics = (c'/ds, -b/ds, a'/ds); ds = a'c' - b^2 where valid, else the constant 1.
        const T gA = g_conics[3 * g], gB = g_conics[3 * g + 1], gC = g_conics[3 * g + 2];
        const T ids = T(1) / ds;
        T g_a = gC * ids, g_b = -gB * ids, g_c = gA * ids;
        T g_ds = -(gA * cb - gB * t.b + gC * ab) * (ids * ids);
        const T go = g_opac_out[g];
        if (s.antialiased) {
          const T r = t.det_orig * ids;
          if (r > 0) {
            const T sr = std::sqrt(r);
            go_sum += go * sr;
            const T g_r = go * opac[bn] / (T(2) * sr);
            const T g_do = g_r * ids;
            g_ds -= g_r * t.det_orig * (ids * ids);
            g_a += g_do * t.c, g_c += g_do * t.a, g_b -= T(2) * t.b * g_do;
          }
        } else {
          go_sum += go;
        }
        if (t.valid_det) g_a += g_ds * cb, g_c += g_ds * ab, g_b -= T(2) * t.b * g_ds;
        // a = J0 Sc J0^T, b = J0 Sc J1^T, c = J1 Sc J1^T.
        const T* J0 = t.J;
        const T* J1 = t.J + 3;
        T gSc[9];
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) gSc[3 * i + j] = g_a * J0[i] * J0[j] + g_b * J0[i] * J1[j] + g_c * J1[i] * J1[j];
        T gp[3] = {0, 0, g_depths[g]};
        if (!s.ortho) {
          T ScJ0[3], ScJ1[3];
          for (int i = 0; i < 3; ++i) {
            ScJ0[i] = t.Sc[3 * i] * J0[0] + t.Sc[3 * i + 1] * J0[1] + t.Sc[3 * i + 2] * J0[2];
            ScJ1[i] = t.Sc[3 * i] * J1[0] + t.Sc[3 * i + 1] * J1[1] + t.Sc[3 * i + 2] * J1[2];
          }
          T gJ[6];
          for (int i = 0; i < 3; ++i) gJ[i] = T(2) * g_a * ScJ0[i] + g_b * ScJ1[i], gJ[3 + i] = T(2) * g_c * ScJ1[i] + g_b * ScJ0[i];
          const T zs = t.zs, iz = t.izs, iz2 = iz * iz, gmx = g_means2d[2 * g], gmy = g_means2d[2 * g + 1];
          const T x = t.p[0], y = t.p[1];
          // J = [[fx/zs, 0, -fx tx/zs^2], [0, fy/zs, -fy ty/zs^2]]; means2d = (fx x/zs + cx, fy y/zs + cy).
          T g_zs = -(fx * x * gmx + fy * y * gmy + fx * gJ[0] + fy * gJ[4]) * iz2 +
                   T(2) * (fx * t.tx * gJ[2] + fy * t.ty * gJ[5]) * (iz2 * iz);
          const T g_tx = -fx * iz2 * gJ[2], g_ty = -fy * iz2 * gJ[5];
          // tx = zs clamp(x / zs, -lxn, lxp).
          g_zs += std::min(std::max(t.ux, -t.lxn), t.lxp) * g_tx + std::min(std::max(t.uy, -t.lyn), t.lyp) * g_ty;
          const T g_ux = zs * g_tx * clamp_grad(t.ux, -t.lxn, t.lxp), g_uy = zs * g_ty * clamp_grad(t.uy, -t.lyn, t.lyp);
          gp[0] = (fx * gmx + g_ux) * iz;
          gp[1] = (fy * gmy + g_uy) * iz;
          g_zs -= (g_ux * x + g_uy * y) * iz2;
          if (t.p[2] > 0) gp[2] += g_zs;
        } else {
          gp[0] = fx * g_means2d[2 * g], gp[1] = fy * g_means2d[2 * g + 1];
        }
        // p = W mu + t; Sc = W Sigma W^T.
        for (int j = 0; j < 3; ++j) gmu[j] += Wm[j] * gp[0] + Wm[4 + j] * gp[1] + Wm[8 + j] * gp[2];
        T WtG[9];  // W^T gSc
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) WtG[3 * i + j] = Wm[i] * gSc[j] + Wm[4 + i] * gSc[3 + j] + Wm[8 + i] * gSc[6 + j];
        for (int i = 0; i < 3; ++i)
          for (int j = 0; j < 3; ++j) gSig[3 * i + j] += WtG[3 * i] * Wm[j] + WtG[3 * i + 1] * Wm[4 + j] + WtG[3 * i + 2] * Wm[8 + j];
      }
      for (int j = 0; j < 3; ++j) g_means[3 * bn + j] = gmu[j];
      g_opac[bn] = go_sum;
      // Sigma = M M^T: gM = (gSig + gSig^T) M; M = R diag(s).
      T gR[9], gs[3] = {0, 0, 0};
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
          T gM = 0;
          for (int k = 0; k < 3; ++k) gM += (gSig[3 * i + k] + gSig[3 * k + i]) * M[3 * k + j];
          gR[3 * i + j] = gM * sc[j];
          gs[j] += gM * R[3 * i + j];
        }
      for (int j = 0; j < 3; ++j) g_scales[3 * bn + j] = gs[j];
      const T w = qn[0], x = qn[1], y = qn[2], z = qn[3];
      T gq[4];
      gq[0] = 2 * (-z * gR[1] + y * gR[2] + z * gR[3] - x * gR[5] - y * gR[6] + x * gR[7]);
      gq[1] = 2 * (y * gR[1] + z * gR[2] + y * gR[3] - 2 * x * gR[4] - w * gR[5] + z * gR[6] + w * gR[7] - 2 * x * gR[8]);
      gq[2] = 2 * (-2 * y * gR[0] + x * gR[1] + w * gR[2] + x * gR[3] + z * gR[5] - w * gR[6] + z * gR[7] - 2 * y * gR[8]);
      gq[3] = 2 * (-2 * z * gR[0] - w * gR[1] + x * gR[2] + w * gR[3] - 2 * z * gR[4] + y * gR[5] + x * gR[6] + y * gR[7]);
      // qn = q / max(|q|, 1e-12).
      if (norm > T(1e-12)) {
        const T dot = qn[0] * gq[0] + qn[1] * gq[1] + qn[2] * gq[2] + qn[3] * gq[3];
        for (int i = 0; i < 4; ++i) g_quats[4 * bn + i] = (gq[i] - qn[i] * dot) / norm;
      } else {
        for (int i = 0; i < 4; ++i) g_quats[4 * bn + i] = gq[i] / T(1e-12);
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------
// Binning
// ------------------------------------------------------------------------------------------------

template <typename T>
std::vector<torch::Tensor> bin_impl(const torch::Tensor& means2d_t, const torch::Tensor& extent_t, const torch::Tensor& depths_t,
                                    const torch::Tensor& valid_t, int64_t images, int64_t N, int64_t tiles_x, int64_t tiles_y,
                                    int64_t max_per_tile) {
  const T* means2d = means2d_t.data_ptr<T>();
  const T* extent = extent_t.data_ptr<T>();
  const T* depths = depths_t.data_ptr<T>();
  const bool* valid = valid_t.data_ptr<bool>();
  const int64_t G = images * N, TT = tiles_x * tiles_y, T_all = images * TT;
  auto opt = torch::TensorOptions().dtype(torch::kInt64);
  std::vector<int32_t> rect(4 * G);  // lo_x, lo_y, hi_x, hi_y
  auto gauss_first_t = torch::empty({G + 1}, opt);
  int64_t* gauss_first = gauss_first_t.data_ptr<int64_t>();
  // Tile rectangle of each valid Gaussian, exactly as the torch twin: floor((m -+ e - 0.5) / 16), clamped.
  at::parallel_for(0, G, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      if (!valid[g]) {
        gauss_first[g + 1] = 0;
        continue;
      }
      const int64_t lim[2] = {tiles_x - 1, tiles_y - 1};
      for (int d = 0; d < 2; ++d) {
        const T m = means2d[2 * g + d], e = extent[2 * g + d];
        const T lo = std::floor((m - e - T(0.5)) / T(TILE)), hi = std::floor((m + e - T(0.5)) / T(TILE));
        rect[4 * g + d] = int32_t(std::min(std::max(lo, T(0)), T(lim[d])));
        rect[4 * g + 2 + d] = int32_t(std::min(std::max(hi, T(0)), T(lim[d])));
      }
      gauss_first[g + 1] = int64_t(rect[4 * g + 2] - rect[4 * g] + 1) * (rect[4 * g + 3] - rect[4 * g + 1] + 1);
    }
  });
  gauss_first[0] = 0;
  for (int64_t g = 0; g < G; ++g) gauss_first[g + 1] += gauss_first[g];
  const int64_t M_all = gauss_first[G];

  // Per image: valid Gaussians sorted by (depth, index); raw per-tile counts.
  std::vector<int64_t> order(G), n_valid(images);
  std::vector<int64_t> raw(T_all, 0);
  at::parallel_for(0, images, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t* o = order.data() + i * N;
      int64_t k = 0;
      for (int64_t n = 0; n < N; ++n)
        if (valid[i * N + n]) o[k++] = i * N + n;
      n_valid[i] = k;
      std::sort(o, o + k, [&](int64_t p, int64_t q) { return depths[p] < depths[q] || (depths[p] == depths[q] && p < q); });
      int64_t* cnt = raw.data() + i * TT;
      for (int64_t j = 0; j < k; ++j) {
        const int32_t* r = rect.data() + 4 * o[j];
        for (int32_t ty = r[1]; ty <= r[3]; ++ty)
          for (int32_t tx = r[0]; tx <= r[2]; ++tx) ++cnt[ty * tiles_x + tx];
      }
    }
  });

  auto tile_start_t = torch::empty({T_all}, opt), tile_count_t = torch::empty({T_all}, opt);
  int64_t* tile_start = tile_start_t.data_ptr<int64_t>();
  int64_t* tile_count = tile_count_t.data_ptr<int64_t>();
  int64_t M = 0, overflow = 0, biggest = 0;
  for (int64_t t = 0; t < T_all; ++t) {
    const int64_t kept = std::min(raw[t], max_per_tile);
    tile_start[t] = M, tile_count[t] = kept;
    M += kept, overflow += raw[t] - kept, biggest = std::max(biggest, raw[t]);
  }

  auto pair_gauss_t = torch::empty({M}, opt), pair_tile_t = torch::empty({M}, opt), pair_slot_t = torch::empty({M_all}, opt);
  int64_t* pair_gauss = pair_gauss_t.data_ptr<int64_t>();
  int64_t* pair_tile = pair_tile_t.data_ptr<int64_t>();
  int64_t* pair_slot = pair_slot_t.data_ptr<int64_t>();
  // Counting-sort fill, front to back: each tile's list is in (depth, index) order by construction.
  at::parallel_for(0, images, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> cursor(TT);
    for (int64_t i = begin; i < end; ++i) {
      std::fill(cursor.begin(), cursor.end(), 0);
      const int64_t* o = order.data() + i * N;
      for (int64_t j = 0; j < n_valid[i]; ++j) {
        const int64_t g = o[j];
        const int32_t* r = rect.data() + 4 * g;
        int64_t slot = gauss_first[g];
        for (int32_t ty = r[1]; ty <= r[3]; ++ty)
          for (int32_t tx = r[0]; tx <= r[2]; ++tx, ++slot) {
            const int64_t local = ty * tiles_x + tx, t = i * TT + local;
            if (cursor[local] < tile_count[t]) {
              const int64_t p = tile_start[t] + cursor[local]++;
              pair_gauss[p] = g, pair_tile[p] = t, pair_slot[slot] = p;
            } else {
              pair_slot[slot] = -1;
            }
          }
      }
    }
  });

  // Non-empty tiles as rows, by decreasing count, ties by tile id.
  std::vector<int64_t> active;
  for (int64_t t = 0; t < T_all; ++t)
    if (tile_count[t] > 0) active.push_back(t);
  std::stable_sort(active.begin(), active.end(), [&](int64_t p, int64_t q) { return tile_count[p] > tile_count[q]; });
  const int64_t rows = int64_t(active.size());
  auto active_t = torch::empty({rows}, opt), row_start_t = torch::empty({rows}, opt), row_count_t = torch::empty({rows}, opt);
  for (int64_t r = 0; r < rows; ++r) {
    active_t.data_ptr<int64_t>()[r] = active[r];
    row_start_t.data_ptr<int64_t>()[r] = tile_start[active[r]];
    row_count_t.data_ptr<int64_t>()[r] = tile_count[active[r]];
  }
  auto stats = torch::tensor({overflow, biggest}, opt);
  return {pair_gauss_t, pair_tile_t, tile_start_t, tile_count_t, active_t, row_start_t, row_count_t, gauss_first_t, pair_slot_t, stats};
}

// ------------------------------------------------------------------------------------------------
// Per-pair log-alpha coefficients: ln(o) - sigma(p) = c . [u^2, uv, v^2, u, v, 1] in the tile's frame
// ------------------------------------------------------------------------------------------------

template <typename T>
void coef_forward_impl(const T* means2d, const T* conics, const T* opac, const int64_t* pair_gauss, const int64_t* pair_tile,
                       int64_t M, int64_t tiles_x, int64_t tiles_y, T* coef) {
  at::parallel_for(0, M, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t g = pair_gauss[p], t = pair_tile[p];
      const T mx = means2d[2 * g] - T((t % tiles_x) * TILE), my = means2d[2 * g + 1] - T(((t / tiles_x) % tiles_y) * TILE);
      const T A = conics[3 * g], B = conics[3 * g + 1], C = conics[3 * g + 2];
      const T lo = std::log(std::max(opac[g], T(ALPHA_MIN)));
      const T cst = T(0.5) * A * mx * mx + B * mx * my + T(0.5) * C * my * my;
      T* c = coef + 6 * p;
      c[0] = T(-0.5) * A, c[1] = -B, c[2] = T(-0.5) * C, c[3] = A * mx + B * my, c[4] = B * mx + C * my, c[5] = lo - cst;
    }
  });
}

template <typename T>
void coef_backward_impl(const T* g_coef, const T* means2d, const T* conics, const T* opac, const int64_t* gauss_first,
                        const int64_t* pair_slot, const int64_t* pair_tile, int64_t G, int64_t tiles_x, int64_t tiles_y,
                        T* g_means2d, T* g_conics, T* g_opac) {
  at::parallel_for(0, G, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const T A = conics[3 * g], B = conics[3 * g + 1], C = conics[3 * g + 2];
      T gm[2] = {0, 0}, gc[3] = {0, 0, 0}, glo = 0;
      for (int64_t j = gauss_first[g]; j < gauss_first[g + 1]; ++j) {
        const int64_t p = pair_slot[j];
        if (p < 0) continue;
        const int64_t t = pair_tile[p];
        const T mx = means2d[2 * g] - T((t % tiles_x) * TILE), my = means2d[2 * g + 1] - T(((t / tiles_x) % tiles_y) * TILE);
        const T* gp = g_coef + 6 * p;
        gm[0] += gp[3] * A + gp[4] * B - gp[5] * (A * mx + B * my);
        gm[1] += gp[3] * B + gp[4] * C - gp[5] * (B * mx + C * my);
        gc[0] += T(-0.5) * gp[0] + gp[3] * mx - T(0.5) * gp[5] * mx * mx;
        gc[1] += -gp[1] + gp[3] * my + gp[4] * mx - gp[5] * mx * my;
        gc[2] += T(-0.5) * gp[2] + gp[4] * my - T(0.5) * gp[5] * my * my;
        glo += gp[5];
      }
      g_means2d[2 * g] = gm[0], g_means2d[2 * g + 1] = gm[1];
      g_conics[3 * g] = gc[0], g_conics[3 * g + 1] = gc[1], g_conics[3 * g + 2] = gc[2];
      // ln(clamp(o, min=ALPHA_MIN)): torch's clamp passes the gradient where o >= ALPHA_MIN.
      g_opac[g] = opac[g] >= T(ALPHA_MIN) ? glo / opac[g] : T(0);
    }
  });
}

// ------------------------------------------------------------------------------------------------
// Untile: composited tile rows (rows, P, C) -> images (B*V, H*W, C), tiles without a row -> fill
// ------------------------------------------------------------------------------------------------

template <typename T>
void untile_forward_impl(const T* rows_data, const int64_t* tile_row, int64_t images, int64_t tiles_x, int64_t tiles_y,
                         int64_t H, int64_t W, int64_t C, T fill, T* image) {
  constexpr int P = TILE * TILE;
  at::parallel_for(0, images * H, 16, [&](int64_t begin, int64_t end) {
    for (int64_t iy = begin; iy < end; ++iy) {
      const int64_t i = iy / H, y = iy % H;
      T* dst = image + iy * W * C;
      for (int64_t x = 0; x < W; ++x) {
        const int64_t r = tile_row[(i * tiles_y + y / TILE) * tiles_x + x / TILE];
        if (r < 0) {
          for (int64_t c = 0; c < C; ++c) dst[x * C + c] = fill;
          continue;
        }
        const T* src = rows_data + (r * P + (y % TILE) * TILE + x % TILE) * C;
        for (int64_t c = 0; c < C; ++c) dst[x * C + c] = src[c];
      }
    }
  });
}

template <typename T>
void untile_backward_impl(const T* g_image, const int64_t* active, int64_t rows, int64_t tiles_x, int64_t tiles_y,
                          int64_t H, int64_t W, int64_t C, T* g_rows) {
  constexpr int P = TILE * TILE;
  at::parallel_for(0, rows, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t t = active[r], i = t / (tiles_x * tiles_y), ty = (t / tiles_x) % tiles_y, tx = t % tiles_x;
      for (int p = 0; p < P; ++p) {
        const int64_t y = ty * TILE + p / TILE, x = tx * TILE + p % TILE;
        T* dst = g_rows + (r * P + p) * C;
        if (y >= H || x >= W) {  // tile padding past the image edge gets no gradient
          for (int64_t c = 0; c < C; ++c) dst[c] = 0;
          continue;
        }
        const T* src = g_image + ((i * H + y) * W + x) * C;
        for (int64_t c = 0; c < C; ++c) dst[c] = src[c];
      }
    }
  });
}

}  // namespace

std::vector<torch::Tensor> project_forward(torch::Tensor means, torch::Tensor quats, torch::Tensor scales, torch::Tensor opac,
                                           torch::Tensor w2c, torch::Tensor K, double width, double height, double near_plane,
                                           double far_plane, double eps2d, bool ortho, bool antialiased) {
  check(means, "means", 3), check(quats, "quats", 3), check(scales, "scales", 3), check(opac, "opacities", 2);
  check(w2c, "w2c", 4), check(K, "K", 4);
  const int64_t B = means.size(0), N = means.size(1), V = w2c.size(1);
  const Settings s{width, height, near_plane, far_plane, eps2d, ortho, antialiased};
  auto o = means.options();
  auto means2d = torch::empty({B, V, N, 2}, o), conics = torch::empty({B, V, N, 3}, o), depths = torch::empty({B, V, N}, o);
  auto opac_out = torch::empty({B, V, N}, o), extent = torch::empty({B, V, N, 2}, o);
  auto valid = torch::empty({B, V, N}, o.dtype(torch::kBool));
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_forward", [&] {
    project_forward_impl<scalar_t>(means.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(), scales.data_ptr<scalar_t>(),
                                   opac.data_ptr<scalar_t>(), w2c.data_ptr<scalar_t>(), K.data_ptr<scalar_t>(), B, V, N, s,
                                   means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(), depths.data_ptr<scalar_t>(),
                                   opac_out.data_ptr<scalar_t>(), extent.data_ptr<scalar_t>(), valid.data_ptr<bool>());
  });
  return {means2d, conics, depths, opac_out, extent, valid};
}

std::vector<torch::Tensor> project_backward(torch::Tensor means, torch::Tensor quats, torch::Tensor scales, torch::Tensor opac,
                                            torch::Tensor w2c, torch::Tensor K, double width, double height, double near_plane,
                                            double far_plane, double eps2d, bool ortho, bool antialiased, torch::Tensor g_means2d,
                                            torch::Tensor g_conics, torch::Tensor g_depths, torch::Tensor g_opac_out) {
  check(g_means2d, "g_means2d", 4), check(g_conics, "g_conics", 4), check(g_depths, "g_depths", 3), check(g_opac_out, "g_opac", 3);
  const int64_t B = means.size(0), N = means.size(1), V = w2c.size(1);
  const Settings s{width, height, near_plane, far_plane, eps2d, ortho, antialiased};
  auto g_means = torch::empty_like(means), g_quats = torch::empty_like(quats), g_scales = torch::empty_like(scales);
  auto g_opac = torch::empty_like(opac);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_backward", [&] {
    project_backward_impl<scalar_t>(means.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(), scales.data_ptr<scalar_t>(),
                                    opac.data_ptr<scalar_t>(), w2c.data_ptr<scalar_t>(), K.data_ptr<scalar_t>(), B, V, N, s,
                                    g_means2d.data_ptr<scalar_t>(), g_conics.data_ptr<scalar_t>(), g_depths.data_ptr<scalar_t>(),
                                    g_opac_out.data_ptr<scalar_t>(), g_means.data_ptr<scalar_t>(), g_quats.data_ptr<scalar_t>(),
                                    g_scales.data_ptr<scalar_t>(), g_opac.data_ptr<scalar_t>());
  });
  return {g_means, g_quats, g_scales, g_opac};
}

std::vector<torch::Tensor> bin_tiles(torch::Tensor means2d, torch::Tensor extent, torch::Tensor depths, torch::Tensor valid,
                                     int64_t images, int64_t tiles_x, int64_t tiles_y, int64_t max_per_tile) {
  check(means2d, "means2d", 2), check(extent, "extent", 2), check(depths, "depths", 1), check(valid, "valid", 1);
  TORCH_CHECK(valid.scalar_type() == torch::kBool, "valid must be bool");
  const int64_t N = images > 0 ? depths.size(0) / images : 0;
  std::vector<torch::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "bin_tiles", [&] {
    out = bin_impl<scalar_t>(means2d, extent, depths, valid, images, N, tiles_x, tiles_y, max_per_tile);
  });
  return out;
}

torch::Tensor pair_coefficients(torch::Tensor means2d, torch::Tensor conics, torch::Tensor opac, torch::Tensor pair_gauss,
                                torch::Tensor pair_tile, int64_t tiles_x, int64_t tiles_y) {
  check(means2d, "means2d", 2), check(conics, "conics", 2), check(opac, "opacities", 1);
  check(pair_gauss, "pair_gauss", 1), check(pair_tile, "pair_tile", 1);
  const int64_t M = pair_gauss.size(0);
  auto coef = torch::empty({M, 6}, means2d.options());
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "pair_coefficients", [&] {
    coef_forward_impl<scalar_t>(means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(), opac.data_ptr<scalar_t>(),
                                pair_gauss.data_ptr<int64_t>(), pair_tile.data_ptr<int64_t>(), M, tiles_x, tiles_y,
                                coef.data_ptr<scalar_t>());
  });
  return coef;
}

std::vector<torch::Tensor> pair_coefficients_backward(torch::Tensor g_coef, torch::Tensor means2d, torch::Tensor conics,
                                                      torch::Tensor opac, torch::Tensor gauss_first, torch::Tensor pair_slot,
                                                      torch::Tensor pair_tile, int64_t tiles_x, int64_t tiles_y) {
  check(g_coef, "g_coef", 2), check(gauss_first, "gauss_first", 1), check(pair_slot, "pair_slot", 1);
  const int64_t G = means2d.size(0);
  auto g_means2d = torch::empty_like(means2d), g_conics = torch::empty_like(conics), g_opac = torch::empty_like(opac);
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "pair_coefficients_backward", [&] {
    coef_backward_impl<scalar_t>(g_coef.data_ptr<scalar_t>(), means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(),
                                 opac.data_ptr<scalar_t>(), gauss_first.data_ptr<int64_t>(), pair_slot.data_ptr<int64_t>(),
                                 pair_tile.data_ptr<int64_t>(), G, tiles_x, tiles_y, g_means2d.data_ptr<scalar_t>(),
                                 g_conics.data_ptr<scalar_t>(), g_opac.data_ptr<scalar_t>());
  });
  return {g_means2d, g_conics, g_opac};
}

torch::Tensor untile_forward(torch::Tensor rows_data, torch::Tensor active, int64_t images, int64_t tiles_x, int64_t tiles_y,
                             int64_t H, int64_t W, double fill) {
  check(rows_data, "rows", 3), check(active, "active", 1);
  const int64_t C = rows_data.size(2), T_all = images * tiles_x * tiles_y;
  std::vector<int64_t> tile_row(T_all, -1);
  const int64_t* act = active.data_ptr<int64_t>();
  for (int64_t r = 0; r < active.size(0); ++r) tile_row[act[r]] = r;
  auto image = torch::empty({images, H * W, C}, rows_data.options());
  AT_DISPATCH_FLOATING_TYPES(rows_data.scalar_type(), "untile_forward", [&] {
    untile_forward_impl<scalar_t>(rows_data.data_ptr<scalar_t>(), tile_row.data(), images, tiles_x, tiles_y, H, W, C,
                                  scalar_t(fill), image.data_ptr<scalar_t>());
  });
  return image;
}

torch::Tensor untile_backward(torch::Tensor g_image, torch::Tensor active, int64_t tiles_x, int64_t tiles_y, int64_t H, int64_t W) {
  check(g_image, "g_image", 3), check(active, "active", 1);
  const int64_t rows = active.size(0), C = g_image.size(2);
  auto g_rows = torch::empty({rows, TILE * TILE, C}, g_image.options());
  AT_DISPATCH_FLOATING_TYPES(g_image.scalar_type(), "untile_backward", [&] {
    untile_backward_impl<scalar_t>(g_image.data_ptr<scalar_t>(), active.data_ptr<int64_t>(), rows, tiles_x, tiles_y, H, W, C,
                                   g_rows.data_ptr<scalar_t>());
  });
  return g_rows;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("project_forward", &project_forward, "EWA projection with culling and extent (CPU)");
  m.def("project_backward", &project_backward, "EWA projection, backward (CPU)");
  m.def("bin_tiles", &bin_tiles, "(Gaussian, tile) pairs sorted by tile then (depth, index) (CPU)");
  m.def("pair_coefficients", &pair_coefficients, "per-pair log-alpha coefficients (CPU)");
  m.def("pair_coefficients_backward", &pair_coefficients_backward, "per-pair log-alpha coefficients, backward (CPU)");
  m.def("untile_forward", &untile_forward, "tile rows -> images (CPU)");
  m.def("untile_backward", &untile_backward, "tile rows -> images, backward (CPU)");
}
