"""LseArgs is the one spec of the masked-LSE ops' arguments: the C++ and the Triton schemas list its fields in its
order (the backward ops after their grads and lse, with need_dk), the autograd saves and returns by its field names,
and the fake kernels check the arguments' shapes and dtypes (torch.compile's view of a bad call) as the ops do."""
import inspect

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from clnscl.loss import ops
from clnscl.loss.ops import TENSOR_FIELDS, LseArgs, load_cpp
from clnscl.loss.positives import class_sums, dense_ids
from clnscl.loss.rows import compute_dtype, nonempty_mean

load_cpp("cpu")
FIELDS = list(LseArgs._fields)
# op -> the arguments before LseArgs' fields and after them
SHAPES = {"masked_lse": ([], []), "masked_lse_cross": ([], []), "masked_lse_backward": (["grad", "lse"], ["need_dk"]),
          "masked_lse_cross_backward": (["grad_rows", "grad_cols", "lse_rows", "lse_cols"], ["need_dk"])}


def _triton_ops():
    pytest.importorskip("triton", reason="triton is not installed: no Triton ops")
    from clnscl.loss.triton import ops as triton_ops

    return triton_ops


def _schema(namespace, op):
    return getattr(getattr(torch.ops, namespace), op).default._schema


def _types(schema):
    """name -> type of every argument; the SymInt that custom_op infers for an int is the C++ schema's int."""
    return {a.name: str(a.type).replace("SymInt", "int") for a in schema.arguments}


@pytest.mark.parametrize("op", list(SHAPES))
def test_the_cpp_schemas_list_the_fields_in_order(op):
    before, after = SHAPES[op]
    assert [a.name for a in _schema("clnscl", op).arguments] == before + FIELDS + after


@pytest.mark.parametrize("op", list(SHAPES))
def test_the_triton_schemas_are_the_cpp_schemas(op):
    """Names, order, types (k optional in masked_lse, required in the cross ops), defaults and returns."""
    _triton_ops()
    cpp, tri = _schema("clnscl", op), _schema("clnscl_triton", op)
    before, after = SHAPES[op]
    assert [a.name for a in tri.arguments] == before + FIELDS + after
    assert _types(tri) == _types(cpp)
    assert [a.default_value for a in tri.arguments] == [a.default_value for a in cpp.arguments]
    assert [str(r.type) for r in tri.returns] == [str(r.type) for r in cpp.returns]


def test_the_triton_functions_take_the_fields():
    """The Python functions behind the Triton ops (what custom_op infers the schema from)."""
    t = _triton_ops()
    for fn, op in ((t.masked_lse_op, "masked_lse"), (t.masked_lse_cross_op, "masked_lse_cross"),
                   (t.masked_lse_backward_op, "masked_lse_backward"),
                   (t.masked_lse_cross_backward_op, "masked_lse_cross_backward")):
        before, after = SHAPES[op]
        assert list(inspect.signature(getattr(fn, "_init_fn", fn)).parameters) == before + FIELDS + after, op


def test_the_autograd_saves_the_tensor_fields_and_returns_one_gradient_per_field():
    schema = _schema("clnscl", "masked_lse")
    assert TENSOR_FIELDS == tuple(a.name for a in schema.arguments if "Tensor" in str(a.type))
    grads = ops._input_grads(q="dq", scale="ds")
    assert len(grads) == len(FIELDS) and grads[FIELDS.index("q")] == "dq" and grads[FIELDS.index("scale")] == "ds"
    assert sum(g is not None for g in grads) == 2
    with pytest.raises(TypeError, match="sclae"):
        ops._input_grads(sclae="ds")


def _args(n=6, m=4, d=3, dtype=torch.float32, cross=False, **change) -> LseArgs:
    """Real arguments of a self (or with cross, a cross) problem, with the fields in `change` replaced."""
    ids, col_ids = torch.arange(n), torch.arange(m)
    args = LseArgs(q=torch.randn(n, d, dtype=dtype), k=torch.randn(m, d, dtype=dtype) if cross else None,
                   row_inst=ids, row_cls=ids, col_inst=col_ids if cross else None, col_cls=col_ids if cross else None,
                   row_offset=m if cross else 0, scale=torch.tensor(5.0), include=7, unit_rows=False)
    return args._replace(**change)


def _namespaces():
    spaces = [torch.ops.clnscl]
    try:
        import clnscl.loss.triton.ops  # noqa: F401
    except ImportError:
        return spaces
    return spaces + [torch.ops.clnscl_triton]


def _fake_call(fn, *values):
    """fn on fake copies of the tensors among values (the fake kernels run, no kernel does)."""
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for v in values]
        return fn(*fake)


BAD = {
    "q 1-D": dict(q=torch.randn(6)),
    "q int": dict(q=torch.ones(6, 3, dtype=torch.int64)),
    "row_inst int32": dict(row_inst=torch.arange(6, dtype=torch.int32)),
    "row_cls short": dict(row_cls=torch.arange(5)),
    "row_inst 2-D": dict(row_inst=torch.arange(6).view(6, 1)),
    "scale 2 elements": dict(scale=torch.tensor([5.0, 5.0])),
    "scale int": dict(scale=torch.tensor(5)),
    "col ids without k": dict(col_inst=torch.arange(6), col_cls=torch.arange(6)),
    "row_offset without k": dict(row_offset=3),
}
BAD_CROSS = {
    "k of another d": dict(k=torch.randn(4, 2)),
    "k of another dtype": dict(k=torch.randn(4, 3, dtype=torch.float64)),
    "col_inst of q's length": dict(col_inst=torch.arange(6)),
    "col_cls float": dict(col_cls=torch.zeros(4)),
    "k without col ids": dict(col_inst=None),
}


@pytest.mark.parametrize("bad", list(BAD), ids=list(BAD))
def test_the_fake_kernels_refuse_what_the_ops_refuse(bad):
    for ns in _namespaces():
        with pytest.raises(RuntimeError, match="masked_lse"):
            _fake_call(ns.masked_lse, *_args(**BAD[bad]))
        good = _args()
        with pytest.raises(RuntimeError, match="masked_lse_backward"):
            _fake_call(ns.masked_lse_backward, torch.zeros(6), torch.zeros(6), *_args(**BAD[bad]))
        with pytest.raises(RuntimeError, match="grad"):
            _fake_call(ns.masked_lse_backward, torch.zeros(5), torch.zeros(6), *good)


@pytest.mark.parametrize("bad", list(BAD_CROSS), ids=list(BAD_CROSS))
def test_the_fake_kernels_refuse_bad_columns(bad):
    for ns in _namespaces():
        with pytest.raises(RuntimeError, match="masked_lse"):
            _fake_call(ns.masked_lse, *_args(cross=True, **BAD_CROSS[bad]))
        if BAD_CROSS[bad].get("col_inst", 0) is None:
            continue  # the cross ops' schema itself refuses a None column id
        with pytest.raises(RuntimeError, match="masked_lse_cross"):
            _fake_call(ns.masked_lse_cross, *_args(cross=True, **BAD_CROSS[bad]))
        with pytest.raises(RuntimeError, match="masked_lse_cross_backward"):
            _fake_call(ns.masked_lse_cross_backward, torch.zeros(6), torch.zeros(4), torch.zeros(6), torch.zeros(4),
                       *_args(cross=True, **BAD_CROSS[bad]))


def test_the_fake_cross_backward_checks_the_columns_grads():
    for ns in _namespaces():
        with pytest.raises(RuntimeError, match="grad_cols"):
            _fake_call(ns.masked_lse_cross_backward, torch.zeros(6), torch.zeros(6), torch.zeros(6), torch.zeros(4),
                       *_args(cross=True))


@pytest.mark.parametrize("dtype,lse_dtype", [(torch.float64, torch.float64), (torch.float32, torch.float32),
                                             (torch.bfloat16, torch.float32)])
def test_the_fake_kernels_give_the_outputs_shapes_and_dtypes(dtype, lse_dtype):
    self_args, cross_args = _args(dtype=dtype), _args(dtype=dtype, cross=True)
    for ns in _namespaces():
        lse = _fake_call(ns.masked_lse, *self_args)
        assert lse.shape == (6,) and lse.dtype == lse_dtype
        rows, cols = _fake_call(ns.masked_lse_cross, *cross_args)
        assert (rows.shape, cols.shape, rows.dtype, cols.dtype) == ((6,), (4,), lse_dtype, lse_dtype)
        dq, dk = _fake_call(ns.masked_lse_backward, torch.zeros(6), torch.zeros(6), *self_args)
        assert dq.shape == (6, 3) and dq.dtype == dtype and dk.shape == (0, 3)
        dq, dk = _fake_call(ns.masked_lse_backward, torch.zeros(6), torch.zeros(6), *cross_args)
        assert dq.shape == (6, 3) and dk.shape == (4, 3) and dk.dtype == dtype
        dq, dk = _fake_call(ns.masked_lse_backward, torch.zeros(6), torch.zeros(6), *cross_args, False)
        assert dk.shape == (0, 3)
        grads = (torch.zeros(6), torch.zeros(4), torch.zeros(6), torch.zeros(4))
        dq, dk = _fake_call(ns.masked_lse_cross_backward, *grads, *cross_args)
        assert dq.shape == (6, 3) and dk.shape == (4, 3)
        dq, dk = _fake_call(ns.masked_lse_cross_backward, *grads, *cross_args, False)
        assert dk.shape == (0, 3)


def test_compile_with_dynamic_shapes_passes_the_fake_checks():
    """The checks hold for symbolic sizes (torch.compile(dynamic=True) traces the fakes with SymInts)."""
    torch._dynamo.reset()

    def f(q, ids):
        return torch.ops.clnscl.masked_lse(*_args(q=q, row_inst=ids, row_cls=ids))

    got = torch.compile(f, dynamic=True, fullgraph=True)(torch.randn(9, 3, dtype=torch.float64), torch.arange(9))
    assert got.shape == (9,) and got.dtype == torch.float64


def test_the_compute_dtype_rule():
    assert compute_dtype(torch.zeros(1, dtype=torch.float64)) == torch.float64
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert compute_dtype(torch.zeros(1, dtype=dtype)) == torch.float32


def test_the_class_sums():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    dense = dense_ids(torch.tensor([10**9, -3, 10**9]))
    sums, counts = class_sums(x, dense, 3)
    assert torch.equal(sums, torch.tensor([[3.0, 4.0], [6.0, 8.0], [0.0, 0.0]]))
    assert torch.equal(counts, torch.tensor([1.0, 2.0, 0.0]))


def test_the_mean_over_nonempty_rows():
    rows = torch.tensor([1.0, float("nan"), 3.0])
    assert nonempty_mean(rows, torch.tensor([True, False, True])).item() == 2.0
    assert nonempty_mean(rows, torch.tensor([False, False, False])).item() == 0.0
