import sys

from aviator.cli import main

sys.exit(main())
