"""Tests of clnscl.loss."""
