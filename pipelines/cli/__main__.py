"""`python -m pipelines.cli ...` is the `lepton` command."""

import sys

from inference.quick_exit import quick_exit
from pipelines.cli import main

sys.exit(quick_exit(main()))
