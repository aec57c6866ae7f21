"""One rank of the multi-process tests (tests/loss/test_distributed.py runs it as a subprocess).

    python tests/support/dist_worker.py --rank R --world W --init FILE --out DIR --sizes 5,7,4 --modes loss,ddp \
        --backends reference,cpu

Every rank builds the same seeded global batch, takes its own rows (rank order), calls the distributed loss
on the gloo group and checks the result against the single-process reference on the global batch, computed
right here (mode open_clip: against open_clip's ClipLoss, local_loss mode, on the same group). Checks
never run collectives, so a mismatch on one rank cannot desynchronise the group; results
go to DIR/rank{R}.json after each configuration (so a killed worker still leaves its messages). The process
ends with barrier, destroy_process_group and os._exit: exit code 0 if every check passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback

T0 = time.monotonic()

import torch  # noqa: E402 (after the clock starts)
import torch.distributed as dist  # noqa: E402

VALUE_TOL = dict(rtol=1e-9, atol=1e-12)  # float64 values
GRAD_TOL = dict(rtol=1e-9, atol=1e-11)  # float64 gradients (entries are O(1/N))
F32_TOL = dict(rtol=2e-5, atol=2e-6)  # float32 run against the float64 oracle
TAU = 0.2


def _dims(v: int) -> int:
    return 13 if v == 2 else 7  # d not a power of two


def global_batch(seed: int, n: int, v: int, d: int, objective: str):
    """Seeded global (N, V, d) float64 features and labels with few classes, so Same(a) spans ranks.

    Labels: classes 0..2 in turn over the rows, so they recur on every rank, plus one singleton class with a
    large id on the last row (its sample has no Same(a): P(a) = Pos(a) for SupCon).
    """
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, v, d, generator=g, dtype=torch.float64)
    shift = int(torch.randint(0, 3, (), generator=g))
    labels = (torch.arange(n) + shift) % 3  # cyclic: every class on every rank with >= 3 samples
    labels[-1] = 10**9 + 7
    return z, (None if objective == "cl" else labels)


def _mismatch(name: str, got: torch.Tensor, want: torch.Tensor, tol: dict) -> str | None:
    got, want = got.detach().to(torch.float64), want.detach().to(torch.float64)
    if got.shape != want.shape:
        return f"{name}: shape {tuple(got.shape)} != expected {tuple(want.shape)}"
    if not torch.isfinite(got).all():
        return f"{name}: non-finite values {got.flatten()[:6].tolist()}"
    if torch.allclose(got, want, **tol):
        return None
    err = (got - want).abs()
    i = int(err.flatten().argmax())
    return (
        f"{name}: max |err| {err.max().item():.3e} at flat index {i} "
        f"(got {got.flatten()[i].item():.12g}, expected {want.flatten()[i].item():.12g}; "
        f"max |expected| {want.abs().max().item():.3e})"
    )


class Recorder:
    def __init__(self, path: str, rank: int, sizes: list[int]):
        self.path, self.data = path, {"rank": rank, "sizes": sizes, "done": False, "results": []}

    def add(self, **entry):
        entry["t"] = round(time.monotonic() - T0, 2)  # seconds since start, for slow-CI diagnosis
        self.data["results"].append(entry)
        self.flush()

    def flush(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f)
        os.replace(tmp, self.path)

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.data["results"])


def run_loss(rank: int, sizes: list[int], backends: list[str], rec: Recorder, group) -> None:
    from clnscl import contrastive_loss

    world, n_glob = len(sizes), sum(sizes)
    offsets = [sum(sizes[:r]) for r in range(world)]
    off, n = offsets[rank], sizes[rank]
    equal = len(set(sizes)) == 1
    configs = [
        (obj, dec, v, be, torch.float64)
        for obj in ("cl", "nscl", "supcon")
        for dec in (False, True)
        for v in (2, 3)
        for be in backends
    ]
    configs += [(obj, False, 2, be, torch.float32) for obj in ("cl", "nscl", "supcon") for be in backends]
    for i, (obj, dec, v, be, dtype) in enumerate(configs):
        name = f"{obj} decoupled={dec} V={v} backend={be} {str(dtype).replace('torch.', '')}"
        seed = 1000 * i + 17 * n_glob + world
        msgs: list[str] = []
        entry = dict(kind="loss", name=name, objective=obj, decoupled=dec, v=v, backend=be, dtype=str(dtype), n=n)
        try:
            zg64, labels = global_batch(seed, n_glob, v, _dims(v), obj)
            kw = dict(objective=obj, decoupled=dec, temperature=TAU)
            if labels is not None:
                mine = set(labels[off : off + n].tolist())
                others = set(labels[:off].tolist()) | set(labels[off + n :].tolist())
                if not mine & others:
                    msgs.append("test setup: no label of this rank is shared with another rank")

            # Oracle: single process, reference backend, global batch, float64; a tensor temperature.
            zg = zg64.clone().requires_grad_(True)
            tau_g = torch.tensor(TAU, dtype=torch.float64, requires_grad=True)
            rows = contrastive_loss(zg, labels, reduction="none", backend="reference", **{**kw, "temperature": tau_g})
            want_rows = rows[off : off + n].detach()
            want_val = want_rows.mean()
            # Σ_r mean over rank r's rows: what the ranks' losses add up to (DDP sums before averaging).
            total = sum(rows[o : o + m].mean() for o, m in zip(offsets, sizes))
            (want_grad,) = torch.autograd.grad(total, zg, retain_graph=True)
            want_grad = want_grad[off : off + n]
            # this rank's loss in τ: its own rows against every rank's columns (DDP then averages the ranks')
            (want_tau,) = torch.autograd.grad(rows[off : off + n].mean(), tau_g)
            if equal:
                zg2 = zg64.clone().requires_grad_(True)
                (g_mean,) = torch.autograd.grad(
                    contrastive_loss(zg2, labels, backend="reference", **kw), zg2
                )
                want_grad_ws = world * g_mean[off : off + n]
            entry["global_sum"] = rows.sum().item()

            # Distributed, this rank's rows only.
            zl = zg64[off : off + n].to(dtype).clone().requires_grad_(True)
            ll = None if labels is None else labels[off : off + n]
            tau = torch.tensor(TAU, dtype=dtype, requires_grad=True)
            loss = contrastive_loss(zl, ll, backend=be, process_group=group, **{**kw, "temperature": tau})
            loss.backward()
            with torch.no_grad():
                none = contrastive_loss(zl, ll, backend=be, process_group=group, reduction="none", **kw)
                ssum = contrastive_loss(zl, ll, backend=be, process_group=group, reduction="sum", **kw)
            entry["local_loss"] = loss.item()

            vt, gt = (VALUE_TOL, GRAD_TOL) if dtype == torch.float64 else (F32_TOL, F32_TOL)
            if loss.dtype != dtype:
                msgs.append(f"loss dtype {loss.dtype} != input dtype {dtype}")
            if loss.shape != ():
                msgs.append(f"loss shape {tuple(loss.shape)} is not a scalar")
            for m in (
                _mismatch("loss (mean over local rows)", loss, want_val, vt),
                _mismatch("reduction='none'", none, want_rows, vt),
                _mismatch("reduction='sum'", ssum, want_rows.sum(), vt),
                _mismatch("z.grad vs grad of sum over ranks of local means", zl.grad, want_grad, gt),
                _mismatch("temperature.grad vs grad of the local mean in τ", tau.grad, want_tau, gt),
                _mismatch("z.grad vs world_size x grad of global mean", zl.grad, want_grad_ws, gt)
                if equal
                else None,
            ):
                if m:
                    msgs.append(m)
        except Exception:  # noqa: BLE001 - reported to the parent
            msgs.append("exception:\n" + traceback.format_exc())
            rec.add(ok=False, msg="; ".join(msgs), **entry)
            raise  # the group may be out of step now: stop this rank
        rec.add(ok=not msgs, msg="; ".join(msgs), **entry)


def run_clip(rank: int, sizes: list[int], backends: list[str], rec: Recorder, group) -> None:
    """clip_loss with local rows × all ranks' columns: this rank's loss is the mean of its rows of both
    directions in the one-process loss of the concatenated pairs; its a/b gradients those of Σ_r loss_r, its
    logit_scale gradient that of its own loss."""
    from clnscl import clip_loss

    world, n_glob = len(sizes), sum(sizes)
    off, n = sum(sizes[:rank]), sizes[rank]
    configs = [(obj, dec, be) for obj, dec in (("cl", False), ("nscl", False), ("supcon", False)) for be in backends]
    for i, (obj, dec, be) in enumerate(configs):
        name = f"clip {obj} decoupled={dec} backend={be}"
        entry = dict(kind="clip", name=name, objective=obj, decoupled=dec, backend=be, n=n)
        msgs: list[str] = []
        try:
            g = torch.Generator().manual_seed(700 + i + 13 * n_glob + world)
            a = torch.randn(n_glob, 9, generator=g, dtype=torch.float64)
            b = torch.randn(n_glob, 9, generator=g, dtype=torch.float64)
            labels = None if obj == "cl" else torch.arange(n_glob) % 3
            kw = dict(objective=obj, decoupled=dec)

            ag, bg = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
            sg = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
            rows = clip_loss(ag, bg, sg, labels=labels, reduction="none", backend="reference", **kw)

            def loss_of(r):
                o, m = sum(sizes[:r]), sizes[r]
                return 0.5 * (rows[0, o : o + m].mean() + rows[1, o : o + m].mean())

            want_val = loss_of(rank).detach()
            want_a, want_b = torch.autograd.grad(sum(loss_of(r) for r in range(world)), (ag, bg), retain_graph=True)
            (want_s,) = torch.autograd.grad(loss_of(rank), sg)

            al, bl = a[off : off + n].clone().requires_grad_(True), b[off : off + n].clone().requires_grad_(True)
            sl = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
            ll = None if labels is None else labels[off : off + n]
            loss = clip_loss(al, bl, sl, labels=ll, backend=be, process_group=group, **kw)
            loss.backward()
            for m in (
                _mismatch("clip loss (this rank's rows)", loss, want_val, VALUE_TOL),
                _mismatch("a.grad vs grad of Σ_r loss_r", al.grad, want_a[off : off + n], GRAD_TOL),
                _mismatch("b.grad vs grad of Σ_r loss_r", bl.grad, want_b[off : off + n], GRAD_TOL),
                _mismatch("logit_scale.grad vs grad of this rank's loss", sl.grad, want_s, GRAD_TOL),
            ):
                if m:
                    msgs.append(m)
        except Exception:  # noqa: BLE001
            msgs.append("exception:\n" + traceback.format_exc())
            rec.add(ok=False, msg="; ".join(msgs), **entry)
            raise
        rec.add(ok=not msgs, msg="; ".join(msgs), **entry)


def run_open_clip(rank: int, sizes: list[int], backends: list[str], rec: Recorder, group) -> None:
    """clip_loss under a process group against the installed open_clip's ClipLoss(local_loss=True,
    gather_with_grad=True) on the same rows: the loss, the a/b gradients (open_clip's differentiable all_gather
    sums every rank's contribution back to the owning rank, as clnscl does) and the logit_scale gradient.

    open_clip expects normalised features: with normalize=True it gets F.normalize of the leaves, clnscl the
    leaves; with normalize=False both get pre-normalised leaves. local_loss needs equal local batch sizes.
    Both losses run collectives (forward and backward), on every rank in the same order.
    """
    import torch.nn.functional as F

    from clnscl import clip_loss

    world, n_glob = len(sizes), sum(sizes)
    off, n = sum(sizes[:rank]), sizes[rank]
    configs = [(be, normalize) for be in backends for normalize in (False, True)]
    for i, (be, normalize) in enumerate(configs):
        name = f"open_clip local_loss normalize={normalize} backend={be}"
        entry = dict(kind="open_clip", name=name, backend=be, normalize=normalize, n=n)
        msgs: list[str] = []
        try:
            if len(set(sizes)) != 1:
                raise ValueError(f"open_clip's local_loss needs equal local batch sizes, got {sizes}")
            from open_clip.loss import ClipLoss  # a declared test dependency: an ImportError fails the check

            g = torch.Generator().manual_seed(900 + i + 13 * n_glob + world)
            a = torch.randn(n_glob, 9, generator=g, dtype=torch.float64)
            b = torch.randn(n_glob, 9, generator=g, dtype=torch.float64)
            if not normalize:
                a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
            a, b = a[off : off + n], b[off : off + n]

            # open_clip, this rank's rows; its labels are arange(n) + n·rank, i.e. the default pairing
            ao, bo = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
            so = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
            fa, fb = (F.normalize(ao, dim=1), F.normalize(bo, dim=1)) if normalize else (ao, bo)
            loss_fn = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)
            want = loss_fn(fa, fb, so)
            want.backward()

            al, bl = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
            sl = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
            loss = clip_loss(al, bl, sl, backend=be, process_group=group, normalize=normalize)
            loss.backward()
            entry["local_loss"], entry["open_clip_loss"] = loss.item(), want.item()
            for m in (
                _mismatch("clip loss vs open_clip ClipLoss", loss, want, VALUE_TOL),
                _mismatch("a.grad vs open_clip's", al.grad, ao.grad, GRAD_TOL),
                _mismatch("b.grad vs open_clip's", bl.grad, bo.grad, GRAD_TOL),
                _mismatch("logit_scale.grad vs open_clip's", sl.grad, so.grad, GRAD_TOL),
            ):
                if m:
                    msgs.append(m)
        except Exception:  # noqa: BLE001
            msgs.append("exception:\n" + traceback.format_exc())
            rec.add(ok=False, msg="; ".join(msgs), **entry)
            raise
        rec.add(ok=not msgs, msg="; ".join(msgs), **entry)


class LearnedTemperatureNet(torch.nn.Module):
    """A small MLP with a learnable temperature τ = exp(log_temperature) among its parameters."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(d_in, 9), torch.nn.Tanh(), torch.nn.Linear(9, d_out))
        self.log_temperature = torch.nn.Parameter(torch.tensor(TAU).log())

    def forward(self, x):
        return self.body(x)


def run_ddp(rank: int, sizes: list[int], backends: list[str], rec: Recorder, group) -> None:
    """DDP-averaged parameter gradients, the learnable temperature's included, equal those of one process on
    the concatenated batch.

    DDP averages Σ_r ∇loss_r / world_size; with equal local sizes that is the gradient of the global mean
    (checked literally), in general that of (1/world_size) Σ_r mean over rank r's rows; with
    reduction="global_mean" the global mean's for any sizes.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    from clnscl import contrastive_loss

    world, n_glob = len(sizes), sum(sizes)
    offsets = [sum(sizes[:r]) for r in range(world)]
    off, n = offsets[rank], sizes[rank]
    equal = len(set(sizes)) == 1
    d_in, d_out, v = 11, 6, 2
    configs = [(obj, dec, be, red) for obj in ("cl", "nscl", "supcon") for dec in (False, True) for be in backends
               for red in ("mean", "global_mean")]
    for i, (obj, dec, be, red) in enumerate(configs):
        name = f"DDP {obj} decoupled={dec} V={v} backend={be} reduction={red}"
        entry = dict(kind="ddp", name=name, objective=obj, decoupled=dec, v=v, backend=be, n=n)
        msgs: list[str] = []
        try:
            x, labels = global_batch(500 + i + 31 * n_glob, n_glob, v, d_in, obj)
            kw = dict(objective=obj, decoupled=dec)
            torch.manual_seed(1234 + i)
            net = LearnedTemperatureNet(d_in, d_out).double()

            def oracle_grads(objective_fn):
                params = {name: p.detach().clone().requires_grad_(True) for name, p in net.named_parameters()}
                w1, b1, w2, b2 = (params[f"body.{k}"] for k in ("0.weight", "0.bias", "2.weight", "2.bias"))
                z = torch.tanh(x @ w1.T + b1) @ w2.T + b2
                return torch.autograd.grad(objective_fn(z, params["log_temperature"].exp()), list(params.values()))

            def averaged(z, tau):
                rows = contrastive_loss(z, labels, reduction="none", backend="reference", **kw, temperature=tau)
                return sum(rows[o : o + m].mean() for o, m in zip(offsets, sizes)) / world

            global_mean = oracle_grads(
                lambda z, tau: contrastive_loss(z, labels, backend="reference", **kw, temperature=tau))
            # reduction="global_mean": the one-process gradient whatever the sizes; "mean": the mean of the
            # per-rank means, which is the global mean's only for equal sizes
            want = global_mean if red == "global_mean" else oracle_grads(averaged)
            want_mean = global_mean if equal else None
            ddp = DDP(net, process_group=group)
            ll = None if labels is None else labels[off : off + n]
            tau = net.log_temperature.exp()
            loss = contrastive_loss(ddp(x[off : off + n]), ll, backend=be, process_group=group, **kw, temperature=tau,
                                    reduction=red)
            loss.backward()
            for j, (pname, p) in enumerate(net.named_parameters()):
                m = _mismatch(f"DDP grad of {pname}", p.grad, want[j], GRAD_TOL)
                if m is None and equal:
                    m = _mismatch(f"DDP grad of {pname} vs global mean", p.grad, want_mean[j], GRAD_TOL)
                if m:
                    msgs.append(m)
            entry["local_loss"] = loss.item()
        except Exception:  # noqa: BLE001
            msgs.append("exception:\n" + traceback.format_exc())
            rec.add(ok=False, msg="; ".join(msgs), **entry)
            raise
        rec.add(ok=not msgs, msg="; ".join(msgs), **entry)


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--init", required=True, help="FileStore path")
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", required=True)
    p.add_argument("--modes", required=True, help="comma-separated: loss, ddp, clip, open_clip")
    p.add_argument("--backends", default="reference,cpu")
    p.add_argument("--timeout", type=float, default=60.0, help="gloo collective timeout, seconds")
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    assert len(sizes) == a.world
    torch.set_num_threads(1)
    rec = Recorder(os.path.join(a.out, f"rank{a.rank}.json"), a.rank, sizes)
    rec.flush()
    code = 0
    try:
        backends = [b for b in a.backends.split(",") if b]
        if "cpu" in backends:  # a compile (stale cache) happens here, before any gloo timeout runs
            from clnscl.loss.backends import BACKENDS

            BACKENDS["cpu"].unavailable()
        if "open_clip" in a.modes.split(","):  # its import takes seconds: before the group's timeouts run
            try:
                import open_clip.loss  # noqa: F401
            except Exception:  # noqa: BLE001 - run_open_clip imports it again and records the failure
                pass
        dist.init_process_group(
            "gloo", init_method=f"file://{a.init}", rank=a.rank, world_size=a.world,
            timeout=datetime.timedelta(seconds=a.timeout),
        )
        group = dist.group.WORLD
        rec.data["seconds_to_init"] = round(time.monotonic() - T0, 2)
        open(os.path.join(a.out, f"rank{a.rank}.ready"), "w").close()  # the parent's check timeout starts
        for mode in a.modes.split(","):
            run = {"loss": run_loss, "ddp": run_ddp, "clip": run_clip, "open_clip": run_open_clip}[mode]
            run(a.rank, sizes, backends, rec, group)
        rec.data["done"] = True
        rec.data["seconds"] = round(time.monotonic() - T0, 2)
        rec.flush()
        code = 0 if rec.ok else 1
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001
        rec.data["error"] = traceback.format_exc()
        rec.flush()
        traceback.print_exc()
        code = code or 2
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
