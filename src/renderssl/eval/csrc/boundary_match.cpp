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
//   Second addition: the connected components of the pair graph are solved one after another, each
//   alone (a phase of the whole-graph run changes only the components whose shortest augmenting path
//   has the phase's length, exactly as their own phase would; see match_raw), so a component stops
//   costing BFS passes once it is done. The tests check pred_matched and gt_matched equal to scipy's,
//   pixel for pixel.
//
// level_counts(pred, gts, offsets) -> [cntR, cntP, sumP]: one level against A annotators in one call
//   (the union of the annotators' matched predicted pixels and the sums, as image_counts does in numpy).
//
// thin(masks, lut_first, lut_second) -> thinned masks, (N, H, W) uint8 0/1 each thinned on its own
//   The same parallel two-subiteration thinning as thin_edges_numpy: per subiteration every pixel's
//   8-neighbour code (x1 = E, then counter-clockwise; outside the image = 0) is computed from the
//   state before it, and on-pixels whose code the subiteration's table marks are deleted together.
//   Iterations (both subiterations) repeat until one deletes nothing. The tables are passed in from
//   Python, so both versions use the same ones. Only candidates are evaluated: a pixel's decision
//   under a table depends on its 8-neighbour code alone, so a pixel that table s kept stays kept
//   until a neighbour is deleted; each table keeps a candidate list (all on-pixels at first, then the
//   on-neighbours of every deleted pixel), so the deletions are those of the full scan.
#include <torch/extension.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

constexpr int32_t INF = std::numeric_limits<int32_t>::max();

}  // namespace

// Raster positions of the nonzero bytes of M (n bytes), in increasing order; zero 8-byte words skipped.
static void nonzero_positions(const uint8_t* M, int64_t n, std::vector<int32_t>& out) {
  out.clear();
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    uint64_t word;
    std::memcpy(&word, M + k, 8);
    if (!word) continue;
    for (int64_t b = 0; b < 8; ++b)
      if (M[k + b]) out.push_back(static_cast<int32_t>(k + b));
  }
  for (; k < n; ++k)
    if (M[k]) out.push_back(static_cast<int32_t>(k));
}

// The matching of one (pred, gt) pair. left_pix (the predicted pixels' raster positions, from
// nonzero_positions(P)) and pred_index (H * W; read only at predicted pixels, where it holds the index
// into left_pix) are the caller's, shared by the annotators of one level. On return x[u] is the
// ground-truth pixel (raster position) matched to left vertex u, or -1.
static void match_raw(const uint8_t* P, const uint8_t* G, int64_t H, int64_t W, const int64_t* off, int64_t K,
                      const std::vector<int32_t>& left_pix, const std::vector<int32_t>& pred_index,
                      std::vector<int32_t>& x_pix) {
  std::vector<int32_t> right_pix;
  nonzero_positions(G, H * W, right_pix);
  const int32_t nL = static_cast<int32_t>(left_pix.size()), nR = static_cast<int32_t>(right_pix.size());

  // CSR adjacency of the left vertices, built from the (usually far fewer) ground-truth pixels: each
  // q visits p = q - offset for every offset; the pairs are counting-sorted by p, stably, and q runs
  // in increasing order, so every row lists its q in increasing order (scipy's sorted CSR).
  std::vector<int32_t> pair_l, pair_r;
  pair_l.reserve(static_cast<size_t>(nR) * 8);
  pair_r.reserve(static_cast<size_t>(nR) * 8);
  int64_t reach_i = 0, reach_j = 0;  // the disc's extent: pixels this far inside the border skip the bounds test
  std::vector<int64_t> lin(K);  // raster offset of p from q
  for (int64_t k = 0; k < K; ++k) {
    reach_i = std::max(reach_i, std::abs(off[2 * k]));
    reach_j = std::max(reach_j, std::abs(off[2 * k + 1]));
    lin[k] = -(off[2 * k] * W + off[2 * k + 1]);
  }
  for (int32_t v = 0; v < nR; ++v) {
    const int64_t q = right_pix[v], i = q / W, j = q % W;
    if (i >= reach_i && i < H - reach_i && j >= reach_j && j < W - reach_j) {
      for (int64_t k = 0; k < K; ++k) {
        if (P[q + lin[k]]) {  // the 1-byte mask first: most neighbours are not predicted pixels
          pair_l.push_back(pred_index[q + lin[k]]);
          pair_r.push_back(v);
        }
      }
      continue;
    }
    for (int64_t k = 0; k < K; ++k) {
      const int64_t pi = i - off[2 * k], pj = j - off[2 * k + 1];
      if (pi < 0 || pi >= H || pj < 0 || pj >= W || !P[pi * W + pj]) continue;
      pair_l.push_back(pred_index[pi * W + pj]);
      pair_r.push_back(v);
    }
  }
  std::vector<int64_t> start(nL + 1, 0);
  for (int32_t u : pair_l) ++start[u + 1];
  for (int32_t u = 0; u < nL; ++u) start[u + 1] += start[u];
  std::vector<int32_t> adj(pair_l.size());
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (size_t e = 0; e < pair_l.size(); ++e) adj[fill[pair_l[e]]++] = pair_r[e];
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

  // Connected components of the pair graph (union-find over the left vertices that share a right
  // vertex; pair_r is grouped by right vertex), each component's left vertices in increasing order.
  std::vector<int32_t> parent(nL);
  for (int32_t u = 0; u < nL; ++u) parent[u] = u;
  auto find = [&parent](int32_t u) {
    while (parent[u] != u) u = parent[u] = parent[parent[u]];
    return u;
  };
  for (size_t e = 1; e < pair_l.size(); ++e) {
    if (pair_r[e] != pair_r[e - 1]) continue;
    const int32_t a = find(pair_l[e]), b = find(pair_l[e - 1]);
    if (a != b) parent[std::max(a, b)] = std::min(a, b);
  }
  std::vector<int32_t> comp_start(nL + 1, 0), comp_list(nL);
  for (int32_t u = 0; u < nL; ++u) ++comp_start[find(u) + 1];
  for (int32_t u = 0; u < nL; ++u) comp_start[u + 1] += comp_start[u];
  {
    std::vector<int32_t> fill(comp_start.begin(), comp_start.end() - 1);
    for (int32_t u = 0; u < nL; ++u) comp_list[fill[find(u)]++] = u;
  }

  // Each component is solved alone. Identical to scipy's run over the whole graph: a phase changes a
  // component only when its own shortest augmenting path has the global length dist[AUX] (a shorter
  // one elsewhere leaves it untouched: no admissible path reaches a free column at that depth), and
  // then its BFS distances (shortest alternating distances, independent of the queue order) and its
  // searches (roots in increasing index order) are the ones it has alone.
  for (int32_t c = 0; c < nL; ++c) {
    const int32_t* cv = comp_list.data() + comp_start[c];
    const int32_t cn = comp_start[c + 1] - comp_start[c];
    if (cn == 0 || (cn == 1 && start[cv[0]] == start[cv[0] + 1])) continue;  // not a root / no edges
    while (true) {
      int32_t head = 0, tail = 0;  // BFS layers from the free left vertices, expanded while below dist[AUX]
      for (int32_t ci = 0; ci < cn; ++ci) {
        const int32_t v = cv[ci];
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

      for (int32_t ci = 0; ci < cn; ++ci) dead[cv[ci]] = 0;
      dead[AUX] = 0;
      for (int32_t ci = 0; ci < cn; ++ci) {
        const int32_t w = cv[ci];
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
  }

  x_pix.assign(nL, -1);
  for (int32_t u = 0; u < nL; ++u)
    if (x[u] >= 0) x_pix[u] = right_pix[x[u]];
}

// Vertex numbering of the predicted pixels (raster order): positions and the H * W index map.
static void number_pixels(const uint8_t* P, int64_t n, std::vector<int32_t>& left_pix, std::vector<int32_t>& pred_index) {
  nonzero_positions(P, n, left_pix);
  pred_index.assign(n, 0);  // entries off the predicted pixels are never read
  for (size_t u = 0; u < left_pix.size(); ++u) pred_index[left_pix[u]] = static_cast<int32_t>(u);
}

static void check_offsets(const torch::Tensor& offsets) {
  TORCH_CHECK(offsets.dim() == 2 && offsets.size(1) == 2 && offsets.scalar_type() == torch::kInt64, "offsets (K, 2) int64");
}

std::vector<torch::Tensor> match_pixels(torch::Tensor pred, torch::Tensor gt, torch::Tensor offsets) {
  TORCH_CHECK(pred.dim() == 2 && gt.sizes() == pred.sizes(), "match_pixels: pred and gt must be (H, W) of one size");
  TORCH_CHECK(pred.scalar_type() == torch::kUInt8 && gt.scalar_type() == torch::kUInt8, "match_pixels: uint8 masks");
  check_offsets(offsets);
  pred = pred.contiguous();
  gt = gt.contiguous();
  offsets = offsets.contiguous();
  const int64_t H = pred.size(0), W = pred.size(1);
  auto opts = torch::TensorOptions().dtype(torch::kUInt8);
  torch::Tensor pm = torch::zeros({H, W}, opts), gm = torch::zeros({H, W}, opts);
  std::vector<int32_t> left_pix, pred_index, x_pix;
  number_pixels(pred.data_ptr<uint8_t>(), H * W, left_pix, pred_index);
  match_raw(pred.data_ptr<uint8_t>(), gt.data_ptr<uint8_t>(), H, W, offsets.data_ptr<int64_t>(), offsets.size(0),
            left_pix, pred_index, x_pix);
  uint8_t* PM = pm.data_ptr<uint8_t>();
  uint8_t* GM = gm.data_ptr<uint8_t>();
  for (size_t u = 0; u < left_pix.size(); ++u) {
    if (x_pix[u] >= 0) {
      PM[left_pix[u]] = 1;
      GM[x_pix[u]] = 1;
    }
  }
  return {pm, gm};
}

// One level of one image: pred (H, W) against each annotator of gts (A, H, W) ->
// {cntR = sum over annotators of matched gt pixels, cntP = predicted pixels matched by any annotator,
//  sumP = predicted pixels}, as image_counts computes them from match_pixels.
std::vector<int64_t> level_counts(torch::Tensor pred, torch::Tensor gts, torch::Tensor offsets) {
  TORCH_CHECK(pred.dim() == 2 && gts.dim() == 3 && gts.size(1) == pred.size(0) && gts.size(2) == pred.size(1),
              "level_counts: pred (H, W) and gts (A, H, W)");
  TORCH_CHECK(pred.scalar_type() == torch::kUInt8 && gts.scalar_type() == torch::kUInt8, "level_counts: uint8 masks");
  check_offsets(offsets);
  pred = pred.contiguous();
  gts = gts.contiguous();
  offsets = offsets.contiguous();
  const int64_t A = gts.size(0), H = pred.size(0), W = pred.size(1);
  const uint8_t* P = pred.data_ptr<uint8_t>();
  std::vector<int32_t> left_pix, pred_index, x_pix;
  number_pixels(P, H * W, left_pix, pred_index);
  std::vector<uint8_t> uni(left_pix.size(), 0);  // predicted pixel matched by some annotator
  int64_t cnt_r = 0, cnt_p = 0;
  for (int64_t a = 0; a < A; ++a) {
    match_raw(P, gts.data_ptr<uint8_t>() + a * H * W, H, W, offsets.data_ptr<int64_t>(), offsets.size(0),
              left_pix, pred_index, x_pix);
    for (size_t u = 0; u < left_pix.size(); ++u) {
      if (x_pix[u] >= 0) {  // one matched pair: one gt pixel of this annotator, one predicted pixel
        ++cnt_r;
        uni[u] = 1;
      }
    }
  }
  for (uint8_t f : uni) cnt_p += f;
  return {cnt_r, cnt_p, static_cast<int64_t>(left_pix.size())};
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
  std::vector<int64_t> cand[2], doomed;
  std::vector<uint8_t> dirty(H * W);  // bit s: the pixel's neighbourhood changed since table s last kept it
  for (int64_t n = 0; n < N; ++n) {  // each map thinned on its own (iterations until it stops changing)
    uint8_t* M = out.data_ptr<uint8_t>() + n * H * W;
    for (int s = 0; s < 2; ++s) cand[s].clear();
    for (int64_t k = 0; k < H * W; ++k) {
      dirty[k] = M[k] ? 3 : 0;
      if (M[k]) {
        cand[0].push_back(k);
        cand[1].push_back(k);
      }
    }
    while (true) {
      int64_t removed = 0;
      for (int sub = 0; sub < 2; ++sub) {
        const uint8_t* lut = luts[sub];
        const uint8_t bit = static_cast<uint8_t>(1u << sub);
        doomed.clear();
        for (int64_t k : cand[sub]) {  // codes from the state before this subiteration
          dirty[k] &= static_cast<uint8_t>(~bit);
          if (!M[k]) continue;
          const int64_t i = k / W, j = k % W;
          unsigned code = 0;
          for (int b = 0; b < 8; ++b) {
            const int64_t qi = i + di[b], qj = j + dj[b];
            if (qi >= 0 && qi < H && qj >= 0 && qj < W && M[qi * W + qj]) code |= 1u << b;
          }
          if (lut[code]) doomed.push_back(k);
        }
        cand[sub].clear();
        for (int64_t k : doomed) M[k] = 0;
        for (int64_t k : doomed) {  // their on-neighbours' codes changed: candidates for both tables again
          const int64_t i = k / W, j = k % W;
          for (int b = 0; b < 8; ++b) {
            const int64_t qi = i + di[b], qj = j + dj[b];
            if (qi < 0 || qi >= H || qj < 0 || qj >= W) continue;
            const int64_t q = qi * W + qj;
            if (!M[q]) continue;
            for (int s = 0; s < 2; ++s) {
              if (!(dirty[q] & (1u << s))) {
                dirty[q] |= static_cast<uint8_t>(1u << s);
                cand[s].push_back(q);
              }
            }
          }
        }
        removed += static_cast<int64_t>(doomed.size());
      }
      if (removed == 0) break;
    }
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("match_pixels", &match_pixels, "maximum matching of boundary pixels within a disc: scipy's Hopcroft-Karp, its matching");
  m.def("level_counts", &level_counts, "cntR, cntP (union over annotators), sumP of one thinned level");
  m.def("thin", &thin, "parallel two-subiteration thinning with the given tables");
}
