import sys

from ig3_edge.main import main

sys.exit(main())
