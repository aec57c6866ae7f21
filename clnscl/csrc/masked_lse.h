// Shared by the CPU and CUDA kernels of clnscl::masked_lse: the row/column sides, the include mask and the
// argument checks (schemas and math in schemas.cpp).
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <limits>
#include <optional>
#include <utility>

namespace clnscl {

// Row or column side of the problem: instance and class id per row, and the offset that turns a local row
// index into the global column index used to recognise "self".
template <typename I>
struct SideOf {
  const I* inst;
  const I* cls;
  int64_t offset;
};
using Side = SideOf<int64_t>;

struct Mask {
  bool pos, same, neg;
  explicit Mask(int64_t include) : pos(include & 1), same(include & 2), neg(include & 4) {}
  // ri == ci ? (pos && rg != cg) : (rc == cc ? same : neg), branch-free so that CPU loops vectorise.
  template <typename I>
  C10_HOST_DEVICE inline bool operator()(I ri, I rc, I rg, I ci, I cc, I cg) const {
    const bool inst = ri == ci, cls = rc == cc;
    return (inst & pos & (rg != cg)) | (!inst & cls & same) | (!inst & !cls & neg);
  }
};

// Arguments of one call, checked and made contiguous; k is q when the op got k = None.
struct Problem {
  at::Tensor q, k;  // k is q when the op got k = None
  at::Tensor row_inst, row_cls, col_inst, col_cls;
  int64_t row_offset;
  bool self_similarity;
};

inline Problem make_problem(const at::Tensor& q, const std::optional<at::Tensor>& k, const at::Tensor& row_inst,
                     const at::Tensor& row_cls, const std::optional<at::Tensor>& col_inst,
                     const std::optional<at::Tensor>& col_cls, int64_t row_offset) {
  TORCH_CHECK(q.dim() == 2, "masked_lse: q must be 2-D (N, d), got ", q.dim(), "-D");
  Problem p;
  p.q = q.detach().contiguous();  // worker threads do not inherit the caller's no-grad mode
  p.self_similarity = !k.has_value();
  p.k = p.self_similarity ? p.q : k->detach().contiguous();
  TORCH_CHECK(p.k.dim() == 2 && p.k.size(1) == q.size(1) && p.k.scalar_type() == q.scalar_type(),
              "masked_lse: k must be (M, d) with the dtype and d of q");
  auto ids = [](const at::Tensor& t, int64_t n, const char* name) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == n && t.scalar_type() == at::kLong, "masked_lse: ", name,
                " must be int64 of length ", n);
    return t.contiguous();
  };
  p.row_inst = ids(row_inst, q.size(0), "row_inst");
  p.row_cls = ids(row_cls, q.size(0), "row_cls");
  if (p.self_similarity) {
    TORCH_CHECK(row_offset == 0 && !col_inst.has_value() && !col_cls.has_value(),
                "masked_lse: with k = None the columns are the rows (no column ids, row_offset 0)");
    p.col_inst = p.row_inst;
    p.col_cls = p.row_cls;
  } else {
    TORCH_CHECK(col_inst.has_value() && col_cls.has_value(), "masked_lse: k needs col_inst and col_cls");
    p.col_inst = ids(*col_inst, p.k.size(0), "col_inst");
    p.col_cls = ids(*col_cls, p.k.size(0), "col_cls");
  }
  p.row_offset = row_offset;
  return p;
}

// The value of the op's `scale` argument: a one-element floating tensor on any device, finite and > 0.
inline double scale_value(const at::Tensor& scale) {
  TORCH_CHECK(scale.numel() == 1 && at::isFloatingType(scale.scalar_type()),
              "masked_lse: scale must be a one-element floating tensor, got ", scale.numel(), " elements of ",
              scale.scalar_type());
  const double s = scale.item<double>();
  TORCH_CHECK(std::isfinite(s) && s > 0, "masked_lse: scale must be finite and > 0, got ", s);
  return s;
}

// Per-row weights of the backward: rows with empty D(a) (lse = −inf) carry no gradient, so they get weight 0
// and lse = +inf, which makes every e^{s − lse} term of theirs vanish. Returns (w, lse_safe, empty_row).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_weights(const at::Tensor& grad, const at::Tensor& lse,
                                                                      const at::TensorOptions& opts) {
  const at::Tensor empty_row = lse.to(opts).eq(-std::numeric_limits<double>::infinity());
  const at::Tensor w = grad.to(opts).masked_fill(empty_row, 0).contiguous();
  const at::Tensor lse_safe =
      lse.to(opts).masked_fill(empty_row, std::numeric_limits<double>::infinity()).contiguous();
  return {w, lse_safe, empty_row};
}

}  // namespace clnscl
