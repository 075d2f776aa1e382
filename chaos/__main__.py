import os
import sys

from chaos.run import main

code = main()
sys.stdout.flush()
sys.stderr.flush()
# Every part was stopped explicitly; leftover non-daemon threads of the in-process network (the
# LLM app's executor, moto's) must not keep a finished run from exiting.
os._exit(code)
