"""The servers that run the services, in one place.

- :mod:`echokit.servers.dev`: ``python service_x/app.py``, Flask's development server made to
  drain on SIGTERM and answer its own errors in JSON.
- :mod:`echokit.servers.gunicorn_config`: everything ``gunicorn.conf.py`` hands over to, the
  settings and hooks of the production server.
- :mod:`echokit.servers.gunicorn_worker`: the gevent worker that drains on SIGTERM.
- :mod:`echokit.servers.http11`: that worker's HTTP/1.1: httptools' parser, the WSGI environ, one
  send per answer, gunicorn's limits and rules.
- :mod:`echokit.servers.gunicorn_patches`: the two changes to gunicorn's internals, applied from
  the ``post_fork`` hook (never at import).
"""

# What both servers put in the Server header: the project, not the framework or a version.
SERVER_NAME = "distributed-echo-system"
