"""`python -m plexserve` is `plexserve`."""

import sys

from plexserve.cli import main

sys.exit(main())
