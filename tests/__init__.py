"""The test suite, one folder per part of the package (loss, metrics, train), shared helpers in support/."""
