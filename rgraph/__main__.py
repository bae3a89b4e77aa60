import sys

from rgraph.cli import main

sys.exit(main())
