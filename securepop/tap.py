"""
twistd integration: Options + makeService(options), as twisted.mail.tap.

L{makeService} hands the settings to L{securepop.assembly.build_root}, which
builds the server (L{securepop.service}) and composes around it what running
it for real needs, from L{securepop.ops}: metrics, the protocol log, graceful
stop, systemd notification, the privilege drop and, with C{workers} above 1,
the worker supervisor.  Under twistd the log observer comes from
L{securepop.ops.twistdlog} (twistd's text line made cheaply, or JSON lines
with C{[log] format = "json"}).
"""

from __future__ import annotations

import sys

from twisted.python import usage

from securepop import config
from securepop.errors import ConfigError


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the securepop POP3 server.  With no options it serves the embedded "
        "default: data in ./securepop-data, STLS on 127.0.0.1:1110 and implicit "
        "TLS on 127.0.0.1:1995, credentials only over TLS."
    )
    optParameters = [
        ["config", "c", None, "Configuration file (TOML); none: the embedded default."],
        ["data-dir", "d", None, "Data directory (overrides server.data_dir)."],
    ]

    def postOptions(self):
        try:
            self.settings = config.load(self["config"], self["data-dir"])
        except ConfigError as e:
            raise usage.UsageError(f"configuration error: {e}")


def makeService(options, reactor=None):
    """
    Build the service; a bad configuration stops the start with its reason
    (exit status 78, EX_CONFIG).
    """
    # The whole server is imported only once twistd runs it: `twistd
    # securepop --help` reads the Options alone.
    from securepop.assembly import build_root

    if reactor is None:
        from twisted.internet import reactor
    try:
        return build_root(options.settings, reactor, options.parent)
    except (ConfigError, ValueError) as e:
        sys.stderr.write(f"securepop: configuration error: {e}\n")
        raise SystemExit(78)
