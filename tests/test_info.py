"""`python -m clnscl.info`: versions, the build, and for every backend of the loss and of the metrics whether it
runs here or why not."""
import subprocess
import sys

import torch

import clnscl
from clnscl.info import report
from clnscl.loss.backends import BACKENDS as LOSS
from clnscl.metrics.pairwise import BACKENDS as METRICS


def test_report_names_every_backend_with_its_state():
    text = report()
    assert text.splitlines()[0] == f"clnscl {clnscl.__version__}"
    for registry in (LOSS, METRICS):
        block = text.split(f"{registry.family} backends:\n", 1)[1].splitlines()[: len(registry.backends)]
        for line, (name, why) in zip(block, registry.status().items()):
            assert line.split()[0] == name
            assert line.split(None, 1)[1] == ("available" if why is None else f"unavailable: {why}")
    assert "reference  available" in text
    assert f"CPU threads: {torch.get_num_threads()} " in text and "OMP_WAIT_POLICY=" in text


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "clnscl.info"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("clnscl ") and "loss backends:" in done.stdout and "metrics backends:" in done.stdout


def test_one_version_string():
    from importlib.metadata import version

    from clnscl._version import __version__

    assert clnscl.__version__ is __version__ and version("clnscl") == __version__
