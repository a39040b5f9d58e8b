"""`python -m alignlab ...`: the CLI, as launchers call it (`accelerate launch -m alignlab train ...`,
`torchrun -m alignlab train ...`)."""

import sys

from alignlab.cli import main

sys.exit(main())
