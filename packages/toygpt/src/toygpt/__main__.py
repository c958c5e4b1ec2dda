import sys

from toygpt.cli import main

sys.exit(main())
