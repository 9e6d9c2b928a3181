"""gunicorn configuration for both services (the production entry point).

    gunicorn -c gunicorn.conf.py 'service_a.app:create_app()'    # Service A on SERVICE_A_HOST:PORT
    gunicorn -c gunicorn.conf.py 'service_b.app:create_app()'    # Service B on SERVICE_B_HOST:PORT

Address, drain times and log level come from the same environment variables the services read
(see the README); WEB_CONCURRENCY sets the number of worker processes.
"""

import os
import sys

from echokit.serving import gunicorn_settings
from echokit.settings import MAX_REQUEST_LINE_BYTES

_config = gunicorn_settings(sys.argv, os.environ)

bind = _config.bind
workers = _config.workers
worker_class = "echokit.gunicorn_worker.GracefulGeventWorker"
worker_connections = _config.worker_connections
# A replacement instance can bind the same port before the old one is sent SIGTERM, so a restart
# outside gunicorn's own reload (SIGHUP) never refuses a connection. The cost: a second instance
# started by mistake on the same port shares the traffic instead of failing with "address in use".
reuse_port = True
# Idle keep-alive connections close after this long; it is also how long a client may take to
# send a request's headers, so a slowloris client ties up one greenlet for 5 s at most.
keepalive = 5
timeout = 30
graceful_timeout = _config.graceful_timeout
# The request-line and header limits, set explicitly (gunicorn's maximum line is 8190 bytes;
# B checks what it sends to A against the same constant).
limit_request_line = MAX_REQUEST_LINE_BYTES
limit_request_fields = 100
limit_request_field_size = 8190
# The services log one access line per request themselves, in the document's format.
accesslog = None
logger_class = "echokit.serving.AppAccessLogger"
errorlog = "-"
loglevel = _config.log_level.lower()
logconfig_dict = _config.logconfig_dict
proc_name = _config.service
on_starting = _config.on_starting
when_ready = _config.when_ready
child_exit = _config.child_exit
# No runtime control socket: two services on one host would fight over its default path, and
# the container's root filesystem is read-only.
control_socket_disable = True
