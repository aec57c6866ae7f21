"""Tests of clnscl.compat: each shim against its peer (or an independent re-implementation of its formula)."""
