import sys

from gatezoo.cli import main

sys.exit(main())
