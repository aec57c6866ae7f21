// CUDA kernels of clnscl::masked_lse and its backward (schemas and math in ../schemas.cpp).
//
// A portable fallback for CUDA tensors when Triton is absent, and the path torch.compile takes through the
// C++ op on a GPU; the fast GPU path is the Triton backend. Each block owns kRows rows; S tiles of
// kRows × kCols are built from kDepth-wide slices of q and k in shared memory and reduced at once:
//  - forward: online (running max) log-sum-exp of each row over the column tiles;
//  - backward: out_a += scale · Σ_b P_ab · c_b with P as in the CPU `accumulate` (row and/or column term),
//    accumulated in fp32 straight into the block's own rows of the output (no atomics).
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../masked_lse.h"

namespace clnscl {
namespace {

constexpr int kRows = 32, kCols = 32, kDepth = 32, kThreads = 256;

template <typename acc_t>
__device__ inline acc_t max_nan(acc_t a, acc_t b) {
  return (b > a || b != b) ? b : a;
}

// Ss[r][c] = scale · ⟨rows[i0 + r], cols[j0 + c]⟩ (0 outside the matrix); all threads of the block take part.
template <typename scalar_t, typename acc_t>
__device__ void score_tile(const scalar_t* __restrict__ rows, int64_t nr, const scalar_t* __restrict__ cols,
                           int64_t nc, int64_t d, int64_t i0, int64_t j0, acc_t scale,
                           acc_t (*As)[kDepth + 1], acc_t (*Bs)[kDepth + 1], acc_t (*Ss)[kCols + 1]) {
  const int t = threadIdx.x;
  const int r = t / (kCols / 4), c0 = (t % (kCols / 4)) * 4;
  acc_t acc[4] = {0, 0, 0, 0};
  for (int64_t k0 = 0; k0 < d; k0 += kDepth) {
    for (int e = t; e < kRows * kDepth; e += kThreads) {
      const int rr = e / kDepth, kk = e % kDepth;
      const int64_t gi = i0 + rr, gk = k0 + kk;
      As[rr][kk] = (gi < nr && gk < d) ? static_cast<acc_t>(rows[gi * d + gk]) : acc_t(0);
      const int64_t gj = j0 + rr;
      Bs[rr][kk] = (gj < nc && gk < d) ? static_cast<acc_t>(cols[gj * d + gk]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kDepth; ++kk) {
      const acc_t a = As[r][kk];
#pragma unroll
      for (int u = 0; u < 4; ++u) acc[u] += a * Bs[c0 + u][kk];
    }
    __syncthreads();
  }
#pragma unroll
  for (int u = 0; u < 4; ++u) Ss[r][c0 + u] = acc[u] * scale;
  __syncthreads();
}

template <typename scalar_t, typename acc_t>
__global__ void lse_forward_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k, int64_t nq,
                                   int64_t nk, int64_t d, Side rs, Side cs, Mask mask, acc_t scale,
                                   acc_t* __restrict__ lse) {
  __shared__ acc_t As[kRows][kDepth + 1], Bs[kCols][kDepth + 1], Ss[kRows][kCols + 1];
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int t = threadIdx.x;
  acc_t m = -std::numeric_limits<acc_t>::infinity(), l = 0;
  for (int64_t j0 = 0; j0 < nk; j0 += kCols) {
    score_tile<scalar_t, acc_t>(q, nq, k, nk, d, i0, j0, scale, As, Bs, Ss);
    const int64_t a = i0 + t;
    if (t < kRows && a < nq) {
      const int64_t ri = rs.inst[a], rc = rs.cls[a], rg = a + rs.offset;
      acc_t mx = -std::numeric_limits<acc_t>::infinity();
      for (int c = 0; c < kCols && j0 + c < nk; ++c)
        if (mask(ri, rc, rg, cs.inst[j0 + c], cs.cls[j0 + c], j0 + c + cs.offset)) mx = max_nan(mx, Ss[t][c]);
      if (mx != -std::numeric_limits<acc_t>::infinity()) {
        const acc_t nm = max_nan(m, mx);
        acc_t sum = 0;
        for (int c = 0; c < kCols && j0 + c < nk; ++c)
          if (mask(ri, rc, rg, cs.inst[j0 + c], cs.cls[j0 + c], j0 + c + cs.offset)) sum += exp(Ss[t][c] - nm);
        l = l * exp(m - nm) + sum;
        m = nm;
      }
    }
    __syncthreads();
  }
  const int64_t a = i0 + t;
  if (t < kRows && a < nq) lse[a] = l == 0 ? -std::numeric_limits<acc_t>::infinity() : m + log(l);
}

template <typename scalar_t, typename acc_t, bool kRow, bool kCol>
__global__ void accumulate_kernel(const scalar_t* __restrict__ rows, const scalar_t* __restrict__ cols, int64_t nr,
                                  int64_t nc, int64_t d, Side rs, Side cs, Mask mask, acc_t scale,
                                  const acc_t* __restrict__ w_r, const acc_t* __restrict__ lse_r,
                                  const acc_t* __restrict__ w_c, const acc_t* __restrict__ lse_c,
                                  acc_t* __restrict__ out) {
  __shared__ acc_t As[kRows][kDepth + 1], Bs[kCols][kDepth + 1], Ss[kRows][kCols + 1];
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int t = threadIdx.x;
  for (int64_t j0 = 0; j0 < nc; j0 += kCols) {
    score_tile<scalar_t, acc_t>(rows, nr, cols, nc, d, i0, j0, scale, As, Bs, Ss);
    for (int e = t; e < kRows * kCols; e += kThreads) {
      const int r = e / kCols, c = e % kCols;
      const int64_t a = i0 + r, b = j0 + c;
      acc_t p = 0;
      if (a < nr && b < nc && mask(rs.inst[a], rs.cls[a], a + rs.offset, cs.inst[b], cs.cls[b], b + cs.offset)) {
        if (kRow) p += w_r[a] * exp(Ss[r][c] - lse_r[a]);
        if (kCol) p += w_c[b] * exp(Ss[r][c] - lse_c[b]);
      }
      Ss[r][c] = p;
    }
    __syncthreads();
    for (int64_t e = t; e < static_cast<int64_t>(kRows) * d; e += kThreads) {
      const int r = static_cast<int>(e / d);
      const int64_t f = e % d, a = i0 + r;
      if (a >= nr) continue;
      acc_t sum = 0;
      for (int c = 0; c < kCols && j0 + c < nc; ++c) sum += Ss[r][c] * static_cast<acc_t>(cols[(j0 + c) * d + f]);
      out[a * d + f] += scale * sum;
    }
    __syncthreads();
  }
}

Side side_of(const at::Tensor& inst, const at::Tensor& cls, int64_t offset) {
  return Side{inst.data_ptr<int64_t>(), cls.data_ptr<int64_t>(), offset};
}

int blocks_for(int64_t n) { return static_cast<int>((n + kRows - 1) / kRows); }

at::Tensor masked_lse_cuda(const at::Tensor& q, const std::optional<at::Tensor>& k, const at::Tensor& row_inst,
                           const at::Tensor& row_cls, const std::optional<at::Tensor>& col_inst,
                           const std::optional<at::Tensor>& col_cls, int64_t row_offset, const at::Tensor& scale_t,
                           int64_t include, bool unit_rows) {
  const Problem p = make_problem(q, k, row_inst, row_cls, col_inst, col_cls, row_offset);
  const double scale = scale_value(scale_t);
  const c10::cuda::CUDAGuard guard(p.q.device());
  const auto acc_type = p.q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor lse = at::empty({p.q.size(0)}, p.q.options().dtype(acc_type));
  if (p.q.size(0) == 0) return lse;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.q.scalar_type(), "masked_lse_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    lse_forward_kernel<scalar_t, acc_t><<<blocks_for(p.q.size(0)), kThreads, 0, stream>>>(
        p.q.data_ptr<scalar_t>(), p.k.data_ptr<scalar_t>(), p.q.size(0), p.k.size(0), p.q.size(1),
        side_of(p.row_inst, p.row_cls, p.row_offset), side_of(p.col_inst, p.col_cls, 0), Mask(include),
        static_cast<acc_t>(scale), lse.data_ptr<acc_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return lse;
}

std::tuple<at::Tensor, at::Tensor> masked_lse_backward_cuda(
    const at::Tensor& grad, const at::Tensor& lse, const at::Tensor& q, const std::optional<at::Tensor>& k,
    const at::Tensor& row_inst, const at::Tensor& row_cls, const std::optional<at::Tensor>& col_inst,
    const std::optional<at::Tensor>& col_cls, int64_t row_offset, const at::Tensor& scale_t, int64_t include,
    bool unit_rows, bool need_dk) {
  const Problem p = make_problem(q, k, row_inst, row_cls, col_inst, col_cls, row_offset);
  const double scale = scale_value(scale_t);
  const c10::cuda::CUDAGuard guard(p.q.device());
  const auto acc_opts = p.q.options().dtype(p.q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  const auto [w, lse_safe, empty_row] = backward_weights(grad, lse, acc_opts);
  at::Tensor dq = at::zeros(p.q.sizes(), acc_opts);
  at::Tensor dk = p.self_similarity || !need_dk ? at::zeros({0, p.q.size(1)}, acc_opts)
                                              : at::zeros(p.k.sizes(), acc_opts);
  const Side rs = side_of(p.row_inst, p.row_cls, p.row_offset), cs = side_of(p.col_inst, p.col_cls, 0);
  const Mask mask(include);
  const int64_t d = p.q.size(1);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.q.scalar_type(), "masked_lse_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const auto sc = static_cast<acc_t>(scale);
    const scalar_t *qp = p.q.data_ptr<scalar_t>(), *kp = p.k.data_ptr<scalar_t>();
    const acc_t *wp = w.data_ptr<acc_t>(), *lp = lse_safe.data_ptr<acc_t>();
    const int64_t nq = p.q.size(0), nk = p.k.size(0);
    if (nq == 0) return;
    if (p.self_similarity) {
      accumulate_kernel<scalar_t, acc_t, true, true><<<blocks_for(nq), kThreads, 0, stream>>>(
          qp, qp, nq, nq, d, rs, rs, mask, sc, wp, lp, wp, lp, dq.data_ptr<acc_t>());
    } else {
      accumulate_kernel<scalar_t, acc_t, true, false><<<blocks_for(nq), kThreads, 0, stream>>>(
          qp, kp, nq, nk, d, rs, cs, mask, sc, wp, lp, nullptr, nullptr, dq.data_ptr<acc_t>());
      if (need_dk)
        accumulate_kernel<scalar_t, acc_t, false, true><<<blocks_for(nk), kThreads, 0, stream>>>(
            kp, qp, nk, nq, d, cs, rs, mask, sc, nullptr, nullptr, wp, lp, dk.data_ptr<acc_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dq.to(p.q.scalar_type()), dk.to(p.q.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(clnscl, CUDA, m) {
  m.impl("masked_lse", &masked_lse_cuda);
  m.impl("masked_lse_backward", &masked_lse_backward_cuda);
}

}  // namespace clnscl
