"""gunicorn configuration file shared by a node's listeners (console, setup API 2390,
delegation API 2391); `manage.py serve` passes it with ``--config``. What can be said
on the command line is said there (ciphers, umask, no control socket); this file holds
what cannot:

- ``ssl_context``: every listener presents its certificate *with* the cluster CA once
  the CA exists (``cluster-ca.crt`` beside the certificate file, as
  ``pamportal.nodes.services.ca_cert_path`` puts it). The delegation API got the chain
  from ``--ca-certs`` (OpenSSL completes the chain from the verification store); the
  console and the setup API now load the CA into the store the same way, without
  asking clients for a certificate. gunicorn builds the context per connection, so a
  CA written by setup is served from the next handshake on. TLS 1.2 at least.
- no ``Server: gunicorn`` banner: gunicorn has no setting for it, so the header line
  is left out where gunicorn's response writes its default headers.

Runs in gunicorn's master (again on SIGHUP); workers inherit it. No Django here.
"""

import ssl
from pathlib import Path

from gunicorn.http import wsgi as _gunicorn_wsgi

CA_FILE_NAME = "cluster-ca.crt"


def ssl_context(conf, default_ssl_context_factory):
    context = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    ca = Path(conf.certfile).with_name(CA_FILE_NAME)
    if conf.ca_certs != str(ca) and ca.exists():
        try:
            context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError):
            pass  # being replaced right now: the leaf alone for this handshake
    return context


def _without_server_header(default_headers):
    def default_headers_without_server(self):
        return [line for line in default_headers(self) if not line.lower().startswith("server:")]

    default_headers_without_server.pamportal_no_server = True
    return default_headers_without_server


if not getattr(_gunicorn_wsgi.Response.default_headers, "pamportal_no_server", False):
    _gunicorn_wsgi.Response.default_headers = _without_server_header(_gunicorn_wsgi.Response.default_headers)
