"""`python -m tcpsched COMMAND`: the one-shot CLI."""

import sys

from tcpsched.cli import main

sys.exit(main())
