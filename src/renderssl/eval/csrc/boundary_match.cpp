// Exact maximum-cardinality matching of boundary pixels, and morphological thinning, on the CPU:
// the compiled twins of renderssl.eval.boundaries.match_boundaries_scipy and thin_edges_numpy.
//
// match_pixels(pred, gt, offsets) -> (pred_matched, gt_matched)
//   pred, gt: (H, W) uint8 0/1; offsets: (K, 2) int64 (di, dj) of the tolerance disc.
//   Graph: predicted pixel p -- ground-truth pixel q when q - p is one of the offsets: the same pair
//   set, vertex numbering (raster order) and edge order (increasing q, as scipy's CSR) as the twin.
//   Algorithm: scipy's Hopcroft-Karp (_hopcroft_karp in scipy/sparse/csgraph/_matching.pyx) step for
//   step, so the matching itself (not only its size) is scipy's: empty start; per phase a BFS from all
//   free left vertices in index order, expanded while below the layer of the first free right vertex;
//   then, for each free left vertex in index order, scipy's stack search: pop v, scan its edges in
//   order, augment through the first admissible free column, else push every admissible matched
//   child; children are popped last-pushed first. Pushing all children and popping LIFO explores
//   each child's whole subtree before the next, so the search is a depth-first search, written here
//   with explicit frames. One addition: a vertex whose subtree search failed is marked dead for the
//   rest of the phase and not searched again. scipy searches it again and fails again: the search
//   from it is exhaustive over the admissible (layered) graph, nothing changes until an augmentation,
//   and an augmentation only removes admissible edges (its vertices get dist INF, its columns now point
//   at them), so a failed vertex stays failed. Without the mark a search can revisit a vertex once per
//   path leading to it (exponential in the depth on dense layered graphs: scipy's slow calls); with it
//   each vertex and edge is scanned once per phase. The parent chain used for the augmentation is the
//   frame stack, which is the path scipy's parents[] records (a vertex is re-pushed only by vertices
//   outside its own subtree, which in a layered graph cannot happen while that subtree is searched).
//   The tests check pred_matched and gt_matched equal to scipy's, pixel for pixel.
//
// thin(masks, lut_first, lut_second) -> thinned masks, (N, H, W) uint8 0/1 each thinned on its own
//   The same parallel two-subiteration thinning as thin_edges_numpy: per subiteration every pixel's
//   8-neighbour code (x1 = E, then counter-clockwise; outside the image = 0) is computed from the
//   state before it, and on-pixels whose code the subiteration's table marks are deleted together.
//   Iterations (both subiterations) repeat until one deletes nothing. The tables are passed in from
//   Python, so both versions use the same ones.
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

constexpr int32_t INF = std::numeric_limits<int32_t>::max();

}  // namespace

std::vector<torch::Tensor> match_pixels(torch::Tensor pred, torch::Tensor gt, torch::Tensor offsets) {
  TORCH_CHECK(pred.dim() == 2 && gt.sizes() == pred.sizes(), "match_pixels: pred and gt must be (H, W) of one size");
  TORCH_CHECK(pred.scalar_type() == torch::kUInt8 && gt.scalar_type() == torch::kUInt8, "match_pixels: uint8 masks");
  TORCH_CHECK(offsets.dim() == 2 && offsets.size(1) == 2 && offsets.scalar_type() == torch::kInt64, "match_pixels: offsets (K, 2) int64");
  pred = pred.contiguous();
  gt = gt.contiguous();
  offsets = offsets.contiguous();
  const int64_t H = pred.size(0), W = pred.size(1), K = offsets.size(0);
  const uint8_t* P = pred.data_ptr<uint8_t>();
  const uint8_t* G = gt.data_ptr<uint8_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();

  // Vertex numbering: predicted pixels (left) and ground-truth pixels (right) in raster order.
  std::vector<int32_t> gt_index(H * W, -1);
  std::vector<int32_t> left_pix, right_pix;
  for (int64_t k = 0; k < H * W; ++k) {
    if (G[k]) {
      gt_index[k] = static_cast<int32_t>(right_pix.size());
      right_pix.push_back(static_cast<int32_t>(k));
    }
    if (P[k]) left_pix.push_back(static_cast<int32_t>(k));
  }
  const int32_t nL = static_cast<int32_t>(left_pix.size()), nR = static_cast<int32_t>(right_pix.size());

  // CSR adjacency of the left vertices.
  std::vector<int64_t> start(nL + 1, 0);
  std::vector<int32_t> adj;
  adj.reserve(static_cast<size_t>(nL) * 8);
  for (int32_t u = 0; u < nL; ++u) {
    const int64_t i = left_pix[u] / W, j = left_pix[u] % W;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t qi = i + off[2 * k], qj = j + off[2 * k + 1];
      if (qi < 0 || qi >= H || qj < 0 || qj >= W) continue;
      const int32_t v = gt_index[qi * W + qj];
      if (v >= 0) adj.push_back(v);
    }
    start[u + 1] = static_cast<int64_t>(adj.size());
  }

  // scipy's _hopcroft_karp (scipy/sparse/csgraph/_matching.pyx), same vertex, edge and stack order.
  // x: left -> right match (-1), y: right -> left match (aux = nL when free), dist over left + aux.
  const int32_t AUX = nL;
  std::vector<int32_t> x(nL, -1), y(nR, AUX), dist(nL + 1), queue(nL + 1);
  std::vector<uint8_t> dead(nL + 1);
  struct Frame {
    int32_t v;
    size_t kids_begin, next;  // this vertex's admissible children are kids[kids_begin, next) still to explore
  };
  std::vector<Frame> frames;
  std::vector<int32_t> kids;
  while (true) {
    int32_t head = 0, tail = 0;  // BFS layers from the free left vertices, expanded while below dist[AUX]
    for (int32_t v = 0; v < nL; ++v) {
      if (x[v] < 0) {
        dist[v] = 0;
        queue[tail++] = v;
      } else {
        dist[v] = INF;
      }
    }
    dist[AUX] = INF;
    while (head < tail) {
      const int32_t v = queue[head++];
      if (dist[v] < dist[AUX]) {
        for (int64_t e = start[v]; e < start[v + 1]; ++e) {
          const int32_t yu = y[adj[e]];
          if (dist[yu] == INF) {
            dist[yu] = dist[v] + 1;
            queue[tail++] = yu;
          }
        }
      }
    }
    if (dist[AUX] == INF) break;  // no augmenting path: maximum

    std::fill(dead.begin(), dead.end(), 0);
    for (int32_t w = 0; w < nL; ++w) {
      if (x[w] >= 0) continue;
      // scipy pops v, scans its edges in order (augmenting at the first admissible free column, else
      // pushing every admissible matched child), then pops the children last-pushed first: a
      // depth-first search whose frames we keep explicitly. A vertex whose search failed is `dead`
      // for the rest of the phase (scipy would search it again and fail again; see the Python docs).
      frames.clear();
      kids.clear();
      int32_t v = w;
      bool augmented = false;
      while (true) {
        // Open a frame for v: scan its edges.
        const size_t kb = kids.size();
        int32_t free_col = -1;
        for (int64_t e = start[v]; e < start[v + 1]; ++e) {
          const int32_t u = adj[e], yu = y[u];
          if (dist[yu] == dist[v] + 1) {
            if (yu == AUX) {
              free_col = u;
              break;
            }
            kids.push_back(yu);
          }
        }
        if (free_col >= 0) {  // unwind: v takes free_col, each frame below takes its child's old column
          kids.resize(kb);
          int32_t u = free_col;
          frames.push_back({v, kb, kb});
          for (size_t f = frames.size(); f-- > 0;) {
            const int32_t pv = frames[f].v;
            dist[pv] = INF;
            const int32_t u_old = x[pv];
            y[u] = pv;
            x[pv] = u;
            u = u_old;
          }
          augmented = true;
          break;
        }
        frames.push_back({v, kb, kids.size()});
        // Next vertex to open: the last unexplored live child of the deepest frame; close exhausted frames.
        int32_t next = -1;
        while (!frames.empty()) {
          Frame& f = frames.back();
          while (f.next > f.kids_begin) {
            const int32_t c = kids[--f.next];
            if (!dead[c]) {
              next = c;
              break;
            }
          }
          if (next >= 0) break;
          dead[f.v] = 1;
          kids.resize(f.kids_begin);
          frames.pop_back();
        }
        if (next < 0) break;  // the root failed
        v = next;
      }
      (void)augmented;
    }
  }

  auto opts = torch::TensorOptions().dtype(torch::kUInt8);
  torch::Tensor pm = torch::zeros({H, W}, opts), gm = torch::zeros({H, W}, opts);
  uint8_t* PM = pm.data_ptr<uint8_t>();
  uint8_t* GM = gm.data_ptr<uint8_t>();
  for (int32_t u = 0; u < nL; ++u) {
    if (x[u] >= 0) {
      PM[left_pix[u]] = 1;
      GM[right_pix[x[u]]] = 1;
    }
  }
  return {pm, gm};
}

torch::Tensor thin(torch::Tensor masks, torch::Tensor lut_first, torch::Tensor lut_second) {
  TORCH_CHECK(masks.dim() == 3 && masks.scalar_type() == torch::kUInt8, "thin: (N, H, W) uint8 masks");
  TORCH_CHECK(lut_first.numel() == 256 && lut_second.numel() == 256 && lut_first.scalar_type() == torch::kUInt8 &&
                  lut_second.scalar_type() == torch::kUInt8, "thin: two 256-entry uint8 tables");
  const int64_t N = masks.size(0), H = masks.size(1), W = masks.size(2);
  torch::Tensor out = masks.contiguous().clone();
  lut_first = lut_first.contiguous();
  lut_second = lut_second.contiguous();
  const uint8_t* luts[2] = {lut_first.data_ptr<uint8_t>(), lut_second.data_ptr<uint8_t>()};
  // Offsets (di, dj) of the code bits: E NE N NW W SW S SE.
  const int di[8] = {0, -1, -1, -1, 0, 1, 1, 1}, dj[8] = {1, 1, 0, -1, -1, -1, 0, 1};
  std::vector<int64_t> on, keep, doomed;
  for (int64_t n = 0; n < N; ++n) {  // each map thinned on its own (iterations until it stops changing)
    uint8_t* M = out.data_ptr<uint8_t>() + n * H * W;
    on.clear();
    for (int64_t k = 0; k < H * W; ++k)
      if (M[k]) on.push_back(k);
    while (true) {
      int64_t removed = 0;
      for (int sub = 0; sub < 2; ++sub) {
        const uint8_t* lut = luts[sub];
        doomed.clear();
        keep.clear();
        for (int64_t k : on) {  // codes from the state before this subiteration
          const int64_t i = k / W, j = k % W;
          unsigned code = 0;
          for (int b = 0; b < 8; ++b) {
            const int64_t qi = i + di[b], qj = j + dj[b];
            if (qi >= 0 && qi < H && qj >= 0 && qj < W && M[qi * W + qj]) code |= 1u << b;
          }
          if (lut[code]) doomed.push_back(k); else keep.push_back(k);
        }
        for (int64_t k : doomed) M[k] = 0;
        removed += static_cast<int64_t>(doomed.size());
        on.swap(keep);
      }
      if (removed == 0) break;
    }
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("match_pixels", &match_pixels, "exact maximum matching of boundary pixels within a disc (greedy + Hopcroft-Karp)");
  m.def("thin", &thin, "parallel two-subiteration thinning with the given tables");
}
