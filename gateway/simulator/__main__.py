import sys

from gateway.simulator.process import main

sys.exit(main())
