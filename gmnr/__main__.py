import sys

from gmnr.cli import main

sys.exit(main())
