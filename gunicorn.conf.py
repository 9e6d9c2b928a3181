"""gunicorn configuration for both services (the production entry point).

    gunicorn -c gunicorn.conf.py 'service_a.app:create_app()'    # Service A on SERVICE_A_HOST:PORT
    gunicorn -c gunicorn.conf.py 'service_b.app:create_app()'    # Service B on SERVICE_B_HOST:PORT

This file only hands the command line and the environment over: every setting and hook is
computed in echokit/servers/gunicorn_config.py from the same variables the services read
(docs/configuration.md); WEB_CONCURRENCY sets the number of worker processes.
"""

import os
import sys

from echokit.servers.gunicorn_config import gunicorn_config

globals().update(gunicorn_config(sys.argv, os.environ))
