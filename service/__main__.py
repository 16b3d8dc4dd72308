"""`python -m service` is `plexserve`."""

import sys

from service.cli import main

sys.exit(main())
