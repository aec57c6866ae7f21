// CPU kernels of clnscl::masked_lse_cross and its backward (schemas and math in ../schemas.cpp).
//
// One pass over the tiles of S = q·kᵀ gives both log-sum-exps: row blocks run in parallel, each row's sum stays
// with its block, each column's is accumulated per thread and the threads' partial sums are merged at the end.
// With unit rows and scale ≤ kMaxFixedShift, |s| ≤ scale and the fixed shift m = scale serves rows and columns:
// one exp per pair. Otherwise rows and columns keep running maxima of their own (two exps per pair, still one
// GEMM). The backward takes both directions' terms in each of its two passes, dq = scale·P·k and
// dk = scale·Pᵀ·q with P_ab = [b ∈ D(a)]·(g_a·e^{s_ab − lse_a} + h_b·e^{s_ab − lse_b}).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../masked_lse.h"
#include "tiles.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

namespace clnscl {
namespace {

using namespace cpu;

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Σ e^{x − shift} kept by a running maximum: merge adds a part (its max mx, its sum at shift mx).
struct Running {
  double m = kNegInf, l = 0.0;
  void merge(double mx, double sum) {
    if (mx == kNegInf) return;
    const double nm = max_nan(m, mx);
    l = l * std::exp(m - nm) + sum * std::exp(mx - nm);
    m = nm;
  }
  double lse() const { return l == 0.0 ? kNegInf : m + std::log(l); }
};

// The masked, scaled scores of one tile in place (excluded pairs −inf).
template <typename T>
void mask_tile(T* s, int64_t r, int64_t c, int64_t i0, int64_t j0, Side rs, Side cs, Mask mask, T scale) {
  const int64_t *ci = cs.inst + j0, *cc = cs.cls + j0;
  for (int64_t a = 0; a < r; ++a) {
    const int64_t ri = rs.inst[i0 + a], rc = rs.cls[i0 + a], rg = i0 + a + rs.offset;
    T* srow = s + a * c;
    for (int64_t b = 0; b < c; ++b)
      srow[b] = mask(ri, rc, rg, ci[b], cc[b], j0 + b + cs.offset) ? srow[b] * scale
                                                                   : -std::numeric_limits<T>::infinity();
  }
}

template <typename T>
void lse_cross(const at::Tensor& q, const at::Tensor& k, Side rs, Side cs, Mask mask, T scale, bool fixed,
               T* lse_r, T* lse_c) {
  const int64_t nq = q.size(0), nk = k.size(0);
  const int64_t nblocks = (nq + kTile - 1) / kTile;
  const int nt = at::get_num_threads();
  std::vector<Running> partial(static_cast<size_t>(nt) * nk);  // every thread's column sums
  const T inf = std::numeric_limits<T>::infinity();
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    Running* cols = partial.data() + static_cast<size_t>(at::get_thread_num()) * nk;
    std::vector<T> sbuf(kTile * kTile), cmax(kTile), csum(kTile);
    std::vector<Running> rows(kTile);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * kTile, r = std::min(kTile, nq - i0);
      std::fill(rows.begin(), rows.end(), Running{});
      for (int64_t j0 = 0; j0 < nk; j0 += kTile) {
        const int64_t c = std::min(kTile, nk - j0);
        scores(sbuf, q, i0, r, k, j0, c);
        mask_tile(sbuf.data(), r, c, i0, j0, rs, cs, mask, scale);
        // shifts: the fixed one, or every column's maximum over this tile (and its running maximum)
        if (fixed) {
          std::fill(cmax.begin(), cmax.begin() + c, scale);
        } else {
          std::fill(cmax.begin(), cmax.begin() + c, -inf);
          for (int64_t a = 0; a < r; ++a)
            for (int64_t b = 0; b < c; ++b) cmax[b] = max_nan(cmax[b], sbuf[a * c + b]);
          for (int64_t b = 0; b < c; ++b) {
            const T mx = max_nan(cmax[b], static_cast<T>(cols[j0 + b].m));
            cmax[b] = mx == -inf ? T(0) : mx;  // nothing kept yet: any finite shift
          }
        }
        std::fill(csum.begin(), csum.begin() + c, T(0));
        for (int64_t a = 0; a < r; ++a) {
          const T* srow = sbuf.data() + a * c;
          T shift = scale;
          if (!fixed) {
            T mx = -inf;
            for (int64_t b = 0; b < c; ++b) mx = max_nan(mx, srow[b]);
            if (mx == -inf) continue;  // nothing of this row kept in the tile: no column term either
            shift = max_nan(mx, static_cast<T>(rows[a].m));
          }
          T sum = 0;
          if (fixed) {
            for (int64_t b = 0; b < c; ++b) {
              const T e = exp_fast<T>(srow[b] - shift);
              sum += e;
              csum[b] += e;
            }
          } else {
            for (int64_t b = 0; b < c; ++b) {
              sum += exp_fast<T>(srow[b] - shift);
              csum[b] += exp_fast<T>(srow[b] - cmax[b]);
            }
          }
          rows[a].merge(shift, sum);
        }
        for (int64_t b = 0; b < c; ++b)
          if (csum[b] != T(0)) cols[j0 + b].merge(cmax[b], csum[b]);
      }
      for (int64_t a = 0; a < r; ++a) lse_r[i0 + a] = static_cast<T>(rows[a].lse());
    }
  });
  at::parallel_for(0, nk, 1024, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      Running all;
      for (int t = 0; t < nt; ++t) all.merge(partial[static_cast<size_t>(t) * nk + b].m,
                                             partial[static_cast<size_t>(t) * nk + b].l);
      lse_c[b] = static_cast<T>(all.lse());
    }
  });
}

void check_dtype(const at::Tensor& q) {
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "masked_lse_cross (CPU): q must be float32 or float64, got ", q.scalar_type());
}

Problem cross_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& row_inst,
                      const at::Tensor& row_cls, const at::Tensor& col_inst, const at::Tensor& col_cls,
                      int64_t row_offset) {
  check_dtype(q);
  return make_problem(q, k, row_inst, row_cls, col_inst, col_cls, row_offset);
}

std::tuple<at::Tensor, at::Tensor> masked_lse_cross_cpu(const at::Tensor& q, const at::Tensor& k,
                                                        const at::Tensor& row_inst, const at::Tensor& row_cls,
                                                        const at::Tensor& col_inst, const at::Tensor& col_cls,
                                                        int64_t row_offset, const at::Tensor& scale_t,
                                                        int64_t include, bool unit_rows) {
  at::NoGradGuard no_grad;
  const Problem p = cross_problem(q, k, row_inst, row_cls, col_inst, col_cls, row_offset);
  const double scale = scale_value(scale_t);
  at::Tensor lse_r = at::empty({p.q.size(0)}, p.q.options());
  at::Tensor lse_c = at::empty({p.k.size(0)}, p.q.options());
  const Side rs{p.row_inst.data_ptr<int64_t>(), p.row_cls.data_ptr<int64_t>(), p.row_offset};
  const Side cs{p.col_inst.data_ptr<int64_t>(), p.col_cls.data_ptr<int64_t>(), 0};
  AT_DISPATCH_FLOATING_TYPES(p.q.scalar_type(), "masked_lse_cross_cpu", [&] {
    lse_cross<scalar_t>(p.q, p.k, rs, cs, Mask(include), static_cast<scalar_t>(scale),
                        unit_rows && scale <= kMaxFixedShift, lse_r.data_ptr<scalar_t>(), lse_c.data_ptr<scalar_t>());
  });
  return {lse_r, lse_c};
}

std::tuple<at::Tensor, at::Tensor> masked_lse_cross_backward_cpu(
    const at::Tensor& grad_rows, const at::Tensor& grad_cols, const at::Tensor& lse_rows,
    const at::Tensor& lse_cols, const at::Tensor& q, const at::Tensor& k, const at::Tensor& row_inst,
    const at::Tensor& row_cls, const at::Tensor& col_inst, const at::Tensor& col_cls, int64_t row_offset,
    const at::Tensor& scale_t, int64_t include, bool unit_rows, bool need_dk) {
  at::NoGradGuard no_grad;
  const Problem p = cross_problem(q, k, row_inst, row_cls, col_inst, col_cls, row_offset);
  const double scale = scale_value(scale_t);
  TORCH_CHECK(grad_rows.numel() == p.q.size(0) && lse_rows.numel() == p.q.size(0),
              "masked_lse_cross_backward: grad_rows and lse_rows must have one entry per row of q");
  TORCH_CHECK(grad_cols.numel() == p.k.size(0) && lse_cols.numel() == p.k.size(0),
              "masked_lse_cross_backward: grad_cols and lse_cols must have one entry per row of k");
  const auto opts = p.q.options();
  const auto [w_r, l_r, empty_r] = backward_weights(grad_rows, lse_rows, opts);
  const auto [w_c, l_c, empty_c] = backward_weights(grad_cols, lse_cols, opts);
  const Side rs{p.row_inst.data_ptr<int64_t>(), p.row_cls.data_ptr<int64_t>(), p.row_offset};
  const Side cs{p.col_inst.data_ptr<int64_t>(), p.col_cls.data_ptr<int64_t>(), 0};
  const Mask mask(include);
  at::Tensor dq = at::zeros_like(p.q);
  at::Tensor dk = need_dk ? at::zeros_like(p.k) : at::empty({0, p.q.size(1)}, opts);
  AT_DISPATCH_FLOATING_TYPES(p.q.scalar_type(), "masked_lse_cross_backward_cpu", [&] {
    const auto sc = static_cast<scalar_t>(scale);
    const scalar_t *wr = w_r.data_ptr<scalar_t>(), *lr = l_r.data_ptr<scalar_t>();
    const scalar_t *wc = w_c.data_ptr<scalar_t>(), *lc = l_c.data_ptr<scalar_t>();
    accumulate<scalar_t, true, true>(p.q, p.k, rs, cs, mask, sc, wr, lr, wc, lc, dq.data_ptr<scalar_t>());
    if (need_dk)
      accumulate<scalar_t, true, true>(p.k, p.q, cs, rs, mask, sc, wc, lc, wr, lr, dk.data_ptr<scalar_t>());
  });
  return {dq, dk};
}

}  // namespace

TORCH_LIBRARY_IMPL(clnscl, CPU, m) {
  m.impl("masked_lse_cross", &masked_lse_cross_cpu);
  m.impl("masked_lse_cross_backward", &masked_lse_cross_backward_cpu);
}

}  // namespace clnscl
