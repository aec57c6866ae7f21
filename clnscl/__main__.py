"""`python -m clnscl ...` (and `torchrun ... -m clnscl train ...`): the command line."""
import sys

from .cli import main

sys.exit(main())
