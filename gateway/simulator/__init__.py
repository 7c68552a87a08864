"""A provider simulator: every registered provider's wire format on one HTTP/1.1 port.

The gateway's tests, benchmarks and embedded default talk to it over real HTTP
on 127.0.0.1. Each provider's wire format lives in its folder
(``gateway/providers/NAME/simulated.py``) and is served at its real API's path:
base URLs are OpenAI ``http://HOST:PORT/v1``, Anthropic and Google
``http://HOST:PORT``. Behaviour (latency, streaming pace, errors, outages) is
set per provider at run time through ``/_sim/config``, served on the main port
and on a separate admin port (which stays up while the main port refuses).

- ``SimulatorProcess``: a child process on free ports, for tests and benchmarks.
- ``Simulator``: the server in the current event loop.
- ``main(argv)``, ``add_arguments(parser)``, ``run(args)``: the command line.
"""

from gateway.simulator.process import SimulatorProcess, add_arguments, main, run
from gateway.simulator.server import Simulator
from gateway.simulator.settings import MODES, PROVIDERS, Settings
from gateway.simulator.wire import embed

__all__ = ["MODES", "PROVIDERS", "Settings", "Simulator", "SimulatorProcess", "add_arguments", "embed", "main", "run"]
