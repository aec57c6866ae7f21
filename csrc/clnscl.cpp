// Op schemas of the clnscl library. Kernels live in cpu/ (C++/OpenMP) and cuda/ (CUDA).
//
// masked_lse: lse_a = log Σ_{b ∈ D(a)} exp(scale · ⟨q_a, k_b⟩) for every row a of q, never forming q·kᵀ.
// The columns are k, or q itself when k is None. D(a) excludes b = a (column a + row_offset) and keeps the
// relations named by the bits of `include`: 1 = same instance, 2 = same class other instance,
// 4 = other class (instance and class ids per row and column). Rows with empty D(a) get -inf.
// `unit_rows` promises ‖q_a‖ ≤ 1, ‖k_b‖ ≤ 1 (normalised rows), which allows a fixed shift.
#include <torch/library.h>

TORCH_LIBRARY(clnscl, m) {
  m.def(
      "masked_lse(Tensor q, Tensor? k, Tensor row_inst, Tensor row_cls, Tensor? col_inst, "
      "Tensor? col_cls, int row_offset, float scale, int include, bool unit_rows) -> Tensor");
  // Gradients of Σ_a grad_a · lse_a with respect to q and k (dk is empty when k is None: dq then holds
  // the whole gradient of the shared rows).
  m.def(
      "masked_lse_backward(Tensor grad, Tensor lse, Tensor q, Tensor? k, Tensor row_inst, "
      "Tensor row_cls, Tensor? col_inst, Tensor? col_cls, int row_offset, float scale, int include, "
      "bool unit_rows) -> (Tensor, Tensor)");
}
