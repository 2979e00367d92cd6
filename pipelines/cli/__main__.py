"""`python -m pipelines.cli ...` is the `lepton` command."""

import sys

from pipelines.cli import main

sys.exit(main())
