"""
The TLS layer under every POP3 session: Twisted's memory-BIO TLS, made lean.

Twisted's default (L{twisted.protocols.tls.BufferingTLSTransport}) holds
every small write back until the next reactor turn with a
C{callLater(0)}: one timer, one more turn and one more C{epoll_wait} per
POP3 reply, which a request/response protocol pays on every command.
L{ServerTLSProtocol} aggregates differently: writes made while a read is
being processed (the replies to a pipelined batch) become one TLS record
flushed when the read is done; writes from anywhere else (a login result,
the RETR producer) go out at once.  It also gives a connection the
transport's interfaces with one C{directlyProvides} instead of one per
interface.  Everything else (handshake, close_notify, producers, errors)
is Twisted's own code.

Output also skips the reactor when it can: TLS bytes are sent on the
socket at once when nothing is queued before them (Twisted's transport
would ask the reactor for a writable event: two C{epoll_ctl} and one more
turn per reply); what the socket does not take is queued the usual way.

L{startTLS} is C{STLS} with this layer instead of Twisted's.

Twisted's private names used here (C{TLSMemoryBIOProtocol._flushSendBIO},
C{_write}, C{_tlsConnection}, C{_appSendBuffer}, C{_connectWrapped},
C{_checkHandshakeStatus}, C{_producer}, C{TLSMemoryBIOFactory._creatorCallable},
C{twisted.internet._newtls._BypassTLS} and the TCP connection's write
buffer C{dataBuffer}, C{_tempDataLen}, C{_writeDisconnected}) are checked by
C{tests/unit/test_tls_transport.py}, which fails naming the one that
changed; setup.cfg bounds the Twisted versions accordingly.
"""

import socket

from OpenSSL.SSL import WantReadError
from twisted.internet import tcp
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from zope.interface import directlyProvides, providedBy

try:  # the one private piece: how Twisted's own startTLS reaches the socket
    from twisted.internet._newtls import _BypassTLS
except ImportError:  # pragma: no cover (a Twisted without it: use its startTLS)
    _BypassTLS = None

# Flush a batch early once it holds this much (bounded memory, and OpenSSL
# cuts records at 16 KiB anyway).
BATCH_LIMIT = 64 * 1024


class ServerTLSProtocol(TLSMemoryBIOProtocol):
    """
    Memory-BIO TLS that batches the replies to one read into one record and
    writes everything else immediately (no C{callLater(0)} per write).
    """

    _batch = None  # list of pending plaintext while a read is processed
    _batchSize = 0
    _socketOwner = None  # the TCP connection whose socket we may send on

    def makeConnection(self, transport):
        # Twisted's version calls directlyProvides once per interface of the
        # transport (nine for TCP); one call does the same.
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self._socketOwner = _tcpConnection(transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            ProtocolWrapper.makeConnection(self, transport)
        self._checkHandshakeStatus()

    def dataReceived(self, data):
        if self._batch is not None:  # re-entered: the outer call flushes
            return TLSMemoryBIOProtocol.dataReceived(self, data)
        self._batch, self._batchSize = [], 0
        try:
            TLSMemoryBIOProtocol.dataReceived(self, data)
        finally:
            self._flushBatch()

    def _flushSendBIO(self):
        # Twisted calls this after each read to send what OpenSSL produced;
        # with replies waiting, encrypting them does that too (and one
        # bio_read that would only raise WantReadError is saved).
        if self._batch:
            self._sendBatch([])
            return
        try:
            data = self._tlsConnection.bio_read(2**15)
        except WantReadError:
            return
        owner = self._socketOwner
        if owner is None or owner.dataBuffer or owner._tempDataLen or owner.disconnecting \
                or not owner.connected or owner._writeDisconnected:
            self.transport.write(data)
            return
        # Nothing queued before it: send now instead of asking the reactor
        # for a writable event (two epoll_ctl and a turn per reply); what the
        # socket does not take is queued the usual way.
        try:
            sent = owner.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # Twisted's doWrite meets the error and closes
        if sent < len(data):
            self.transport.write(data[sent:])

    def _flushBatch(self):
        self._sendBatch(None)  # the read is done: stop batching

    def _sendBatch(self, then):
        """Encrypt what was batched; C{then} is the new batch ([] or None)."""
        batch, self._batch, self._batchSize = self._batch, then, 0
        if batch:
            self._write(batch[0] if len(batch) == 1 else b"".join(batch))

    def write(self, data):
        if self.disconnecting and self._producer is None:
            return
        if self._batch is None:
            self._write(data)
            return
        self._batch.append(data)
        self._batchSize += len(data)
        if self._batchSize >= BATCH_LIMIT:
            self._sendBatch([])

    def writeSequence(self, iovec):
        self.write(b"".join(iovec))

    def loseConnection(self):
        # What was written before must precede the close_notify.
        if self._batch:
            self._sendBatch([])
        TLSMemoryBIOProtocol.loseConnection(self)

    def abortConnection(self):
        if self._batch is not None:
            self._batch, self._batchSize = [], 0
        TLSMemoryBIOProtocol.abortConnection(self)


def _tcpConnection(transport):
    """The Twisted TCP connection under C{transport} (directly or as STLS), or None."""
    if _BypassTLS is not None and isinstance(transport, _BypassTLS):
        transport = transport._connection
    if isinstance(transport, tcp.Connection) and isinstance(transport.socket, socket.socket):
        return transport
    return None


class ServerTLSFactory(TLSMemoryBIOFactory):
    """L{TLSMemoryBIOFactory} building L{ServerTLSProtocol} (implicit TLS)."""

    protocol = ServerTLSProtocol

    def __init__(self, creator, wrappedFactory, clock=None):
        super().__init__(creator, False, wrappedFactory, clock)


def startTLS(transport, creator):
    """
    C{STLS}: put a L{ServerTLSProtocol} (server side) between a TCP
    transport and its protocol, as C{transport.startTLS} would with
    Twisted's own layer.  Transports that are not Twisted TCP connections
    (wrappers, test doubles) get their own C{startTLS}.
    """
    if _BypassTLS is None or not isinstance(transport, tcp.Server):
        return transport.startTLS(creator)
    producer, streaming = None, None
    if transport.producer is not None:
        producer, streaming = transport.producer, transport.streamingProducer
        transport.unregisterProducer()
    factory = TLSMemoryBIOFactory(creator, False, None)
    tlsProtocol = ServerTLSProtocol(factory, transport.protocol, False)
    transport.protocol = tlsProtocol
    transport.getHandle = tlsProtocol.getHandle
    transport.getPeerCertificate = tlsProtocol.getPeerCertificate
    directlyProvides(transport, ISSLTransport)
    transport.TLS = True
    # As Twisted: the TLS layer writes raw bytes through FileDescriptor's
    # methods, below the connection's TLS-aware ones.
    tlsProtocol.makeConnection(_BypassTLS(FileDescriptor, transport))
    if producer:
        transport.registerProducer(producer, streaming)
