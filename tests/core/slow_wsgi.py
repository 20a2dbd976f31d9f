"""A WSGI app for the worker tests: answers after a short sleep with the pid of the
process that served the request."""

import os
import time


def app(environ, start_response):
    time.sleep(0.5)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
