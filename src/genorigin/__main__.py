import sys

from genorigin.cli import main

sys.exit(main())
