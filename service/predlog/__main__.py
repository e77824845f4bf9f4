"""``python -m service.predlog --help``: see service/predlog/cli.py."""

import sys

from service.predlog.cli import main

sys.exit(main())
