"""
The floor: a bare Twisted TLS server that greets and answers QUIT.

What a Python POP3 server cannot go below on this machine: the reactor,
a TLS handshake through pyOpenSSL's memory BIO, one greeting and one QUIT.
It answers STLS on its second port so the STLS path has a floor too; any
other command gets C{-ERR}.  Run by L{bench.servers.FloorServer}::

    python bench/floor_server.py --cert C --key K --implicit PORT --stls PORT
"""

import argparse

from OpenSSL import crypto
from twisted.internet import endpoints, protocol, ssl
from twisted.protocols.basic import LineOnlyReceiver


class FloorPOP3(LineOnlyReceiver):
    delimiter = b"\r\n"

    def __init__(self, tls_options=None):
        self.tls_options = tls_options

    def connectionMade(self):
        self.sendLine(b"+OK floor ready")

    def lineReceived(self, line):
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"QUIT":
            self.sendLine(b"+OK bye")
            self.transport.loseConnection()
        elif verb == b"STLS" and self.tls_options is not None:
            self.sendLine(b"+OK begin TLS")
            self.transport.startTLS(self.tls_options)
            self.tls_options = None
        else:
            self.sendLine(b"-ERR floor")


class FloorFactory(protocol.Factory):
    def __init__(self, tls_options=None):
        self.tls_options = tls_options

    def buildProtocol(self, addr):
        return FloorPOP3(self.tls_options)


def options(cert, key):
    with open(cert, "rb") as f:
        certificate = crypto.load_certificate(crypto.FILETYPE_PEM, f.read())
    with open(key, "rb") as f:
        private_key = crypto.load_privatekey(crypto.FILETYPE_PEM, f.read())
    return ssl.CertificateOptions(
        privateKey=private_key, certificate=certificate,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2)


def main(argv=None):
    from twisted.internet import reactor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--implicit", type=int, required=True)
    parser.add_argument("--stls", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    tls = options(args.cert, args.key)
    endpoints.SSL4ServerEndpoint(reactor, args.implicit, tls, backlog=1024,
                                 interface=args.host).listen(FloorFactory())
    endpoints.TCP4ServerEndpoint(reactor, args.stls, backlog=1024,
                                 interface=args.host).listen(FloorFactory(tls))
    reactor.run()


if __name__ == "__main__":
    main()
