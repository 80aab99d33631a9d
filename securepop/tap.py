"""
twistd integration: Options + makeService(options), as twisted.mail.tap.
"""

import signal
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
    """Build the service; a bad configuration stops the start with its reason."""
    from securepop.service import makeService as build

    if reactor is None:
        from twisted.internet import reactor
    try:
        svc = build(options.settings, reactor)
    except ConfigError as e:
        sys.stderr.write(f"securepop: configuration error: {e}\n")
        raise SystemExit(78)      # EX_CONFIG
    _install_reload(svc, reactor)
    return svc


def _install_reload(svc, reactor):
    """SIGHUP reloads the configuration (systemctl reload)."""
    if not hasattr(signal, "SIGHUP"):
        return

    def on_hup(signum, frame):
        reactor.callFromThread(svc.reload)

    try:
        signal.signal(signal.SIGHUP, on_hup)
    except ValueError:
        pass   # not the main thread (embedded): the host application decides
