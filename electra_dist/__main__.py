"""`python -m electra_dist` is the `electra-dist` command."""

import sys

from electra_dist.commands.cli import main

sys.exit(main())
