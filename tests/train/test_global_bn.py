"""GlobalBatchNorm in a one-process gloo group equals torch's BatchNorm (outputs, input and parameter
gradients, running statistics, momentum=None's cumulative average, eval mode); the 2-process case is
tests/train/test_ddp.py's training equivalence. Runs in a subprocess: a gloo process group is best ended with
os._exit."""
import subprocess
import sys
import textwrap

import pytest

from tests.support.processes import repo_env

pytestmark = pytest.mark.distributed

SCRIPT = textwrap.dedent("""
    import os, sys, tempfile, traceback
    import torch, torch.distributed as dist
    from torch import nn
    code = 0
    try:
        dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
        from clnscl.train.global_bn import GlobalBatchNorm, convert_global_batchnorm
        torch.manual_seed(0)
        for shape, momentum in (((6, 5, 7, 3), 0.1), ((9, 4), None), ((5, 3, 11), 0.3)):
            bn = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shape)](shape[1], momentum=momentum)
            with torch.no_grad():
                bn.weight.uniform_(0.5, 2.0), bn.bias.uniform_(-1, 1)
            net = convert_global_batchnorm(nn.Sequential(bn))
            ref = nn.Sequential(bn)
            assert isinstance(net[0], GlobalBatchNorm) and net[0] is not bn
            for step in range(3):
                x = (torch.randn(shape, dtype=torch.float64) * 3 + 5).float()
                w = torch.randn(shape)
                xs = [x.clone().requires_grad_() for _ in range(2)]
                outs = [model(xi) for model, xi in zip((net, ref), xs)]
                for out in outs:
                    (out * w).sum().backward()
                torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-4, atol=1e-5)
            for key in ("weight", "bias"):
                torch.testing.assert_close(getattr(net[0], key).grad, getattr(bn, key).grad, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(net[0].running_mean, bn.running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(net[0].running_var, bn.running_var, rtol=1e-5, atol=1e-6)
            assert int(net[0].num_batches_tracked) == int(bn.num_batches_tracked)
            net.eval(), bn.eval()
            x = torch.randn(shape)
            torch.testing.assert_close(net(x), bn(x))
        print("ok")
        dist.destroy_process_group()
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(code)
""")


def test_global_batchnorm_equals_batchnorm_in_one_process():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                          env=repo_env())
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
