"""Packaging shim: ships csrc/ inside the package so the C++/CUDA ops can be compiled on first use.

The ops are not compiled at install time (see clnscl/_ext.py): they are built with ninja against the torch
that is actually imported, which avoids the classic ABI mismatch of extensions built in pip's isolated
build environment.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithSources(build_py):
    def run(self):
        super().run()
        src = Path(__file__).parent / "csrc"
        dst = Path(self.build_lib) / "clnscl" / "_csrc"
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithSources})
