"""
PROXY protocol (HAProxy, v1 text and v2 binary) from trusted proxies only.

Twisted's C{haproxy:} endpoint calls the wrapped protocol's
C{connectionMade} before the header has arrived, so the policy and the
greeting would see the proxy's address.  L{ProxyProtocolFactory} instead
holds the connection until the header is read and only then builds the
wrapped protocol (its factory's C{buildProtocol} gets the real client
address) and calls its C{connectionMade}; C{transport.getPeer()} and
C{getHost()} then answer the addresses the proxy reported.

 - A peer inside C{trustedProxies} MUST send a header (v1 or v2) within
   C{headerTimeout} seconds; anything else closes the connection without
   a byte written.
 - From any other peer no header is parsed: its bytes reach the wrapped
   protocol unchanged (for POP3, "PROXY ..." is just an unknown command).
 - The trusted list can be replaced at any time (a reload): connections
   accepted afterwards follow the new list.  With an empty list the factory
   builds the wrapped protocol directly, with no wrapper in the way.

Accepted headers: C{PROXY} for TCP over IPv4/IPv6 (the real client), and
the v2 C{LOCAL} command (the proxy's own health check: the socket
addresses are used).  Refused: v1 C{UNKNOWN}, v2 C{UNSPEC}, C{UNIX} and
datagram families -- securepop's rules and limits need a client IP, and
falling back to the proxy's address would let every such client share
the proxy's rules.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols import policies
from zope.interface import directlyProvides, implementer, providedBy

from securepop.access.rules import normaliseAddress

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # the spec's bound, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_LENGTH = 16
V2_DEFAULT_MAX_PAYLOAD = 1024  # addresses + TLVs we are willing to buffer

_V2_ADDRESS_LENGTHS = {0x1: 12, 0x2: 36, 0x3: 216}
_FAMILIES = {0x0: "unspec", 0x1: "inet", 0x2: "inet6", 0x3: "unix"}
_TRANSPORTS = {0x0: "unspec", 0x1: "stream", 0x2: "dgram"}

_log = Logger()


class ProxyHeaderError(ValueError):
    """A malformed or unacceptable PROXY header (text for logs only)."""


@dataclass(frozen=True)
class ProxyHeader:
    """
    @ivar version: 1 or 2.
    @ivar command: C{"PROXY"}, C{"LOCAL"} (v2) or C{"UNKNOWN"} (v1).
    @ivar family: C{"inet"}, C{"inet6"}, C{"unix"} or C{"unspec"}.
    @ivar transport: C{"stream"}, C{"dgram"} or C{"unspec"}.
    @ivar source: the client's L{IPv4Address}/L{IPv6Address} or L{None}.
    @ivar destination: the address the client connected to, or L{None}.
    @ivar length: bytes the header occupied.
    """

    version: int
    command: str
    family: str
    transport: str
    source: object
    destination: object
    length: int


def _twistedAddress(ip, port):
    if ip.version == 4:
        return IPv4Address("TCP", str(ip), port)
    return IPv6Address("TCP", str(ip), port)


def _hostOf(address):
    """The IP of an IPv4/IPv6 address, or L{None} (a UNIX socket, ...)."""
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host
    return None


def _v1Port(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 5 or (len(raw) > 1 and raw[:1] == b"0"):
        raise ProxyHeaderError(f"bad port {raw[:8]!r}")
    port = int(raw)
    if port > 65535:
        raise ProxyHeaderError(f"port {port} out of range")
    return port


def _parseV1(data: bytes):
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH or b"\n" in data[:V1_MAX_LENGTH]:
            raise ProxyHeaderError("v1 header without CRLF within 107 bytes")
        return None
    line = data[:end]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("v1 header is not ASCII") from None
    parts = text.split(" ")
    if len(parts) < 2:
        raise ProxyHeaderError("v1 header without protocol")
    protocol = parts[1]
    if protocol == "UNKNOWN":
        return ProxyHeader(1, "UNKNOWN", "unspec", "unspec", None, None, end + 2)
    if protocol not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"v1 protocol {protocol[:10]!r} unknown")
    if len(parts) != 6:
        raise ProxyHeaderError("v1 header needs exactly 6 fields")
    _, _, src, dst, sport, dport = parts
    version = 4 if protocol == "TCP4" else 6
    try:
        ips = [ipaddress.ip_address(src), ipaddress.ip_address(dst)]
    except ValueError:
        raise ProxyHeaderError("v1 header with a bad address") from None
    if any(ip.version != version for ip in ips):
        raise ProxyHeaderError(f"v1 address does not match {protocol}")
    ports = [_v1Port(sport.encode()), _v1Port(dport.encode())]
    return ProxyHeader(
        1, "PROXY", "inet" if version == 4 else "inet6", "stream",
        _twistedAddress(ips[0], ports[0]), _twistedAddress(ips[1], ports[1]), end + 2,
    )


def _checkTLVs(data: bytes):
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyHeaderError("v2 TLV truncated")
        (length,) = struct.unpack_from("!H", data, offset + 1)
        offset += 3 + length
        if offset > len(data):
            raise ProxyHeaderError("v2 TLV longer than the header")


def _parseV2(data: bytes, maxPayload: int):
    if len(data) < V2_HEADER_LENGTH:
        return None
    verCmd, famProto, length = struct.unpack_from("!BBH", data, 12)
    if verCmd >> 4 != 2:
        raise ProxyHeaderError(f"v2 version nibble {verCmd >> 4} is not 2")
    command = {0x0: "LOCAL", 0x1: "PROXY"}.get(verCmd & 0xF)
    if command is None:
        raise ProxyHeaderError(f"v2 command {verCmd & 0xF} unknown")
    family = _FAMILIES.get(famProto >> 4)
    transport = _TRANSPORTS.get(famProto & 0xF)
    if family is None or transport is None:
        raise ProxyHeaderError(f"v2 family/protocol byte 0x{famProto:02x} unknown")
    if length > maxPayload:
        raise ProxyHeaderError(f"v2 header length {length} over the limit {maxPayload}")
    needed = _V2_ADDRESS_LENGTHS.get(famProto >> 4, 0)
    if length < needed:
        raise ProxyHeaderError(f"v2 length {length} too short for {family} addresses")
    total = V2_HEADER_LENGTH + length
    if len(data) < total:
        return None
    payload = data[V2_HEADER_LENGTH:total]
    source = destination = None
    if family in ("inet", "inet6") and command == "PROXY":
        size = 4 if family == "inet" else 16
        src = ipaddress.ip_address(payload[:size])
        dst = ipaddress.ip_address(payload[size:2 * size])
        sport, dport = struct.unpack_from("!HH", payload, 2 * size)
        source = _twistedAddress(src, sport)
        destination = _twistedAddress(dst, dport)
    _checkTLVs(payload[needed:])
    return ProxyHeader(2, command, family, transport, source, destination, total)


def parseProxyHeader(data: bytes, maxV2Payload: int = V2_DEFAULT_MAX_PAYLOAD):
    """
    Parse a PROXY header at the start of C{data}.

    @return: a L{ProxyHeader}, or L{None} when C{data} is a valid but
        incomplete beginning of a header (read more).
    @raise ProxyHeaderError: C{data} cannot begin a valid header.
    """
    if data[:len(V2_SIGNATURE)] == V2_SIGNATURE[:len(data)]:
        return _parseV2(data, maxV2Payload) if len(data) >= len(V2_SIGNATURE) else None
    if data[:len(V1_PREFIX)] == V1_PREFIX[:len(data)]:
        return _parseV1(data) if len(data) >= len(V1_PREFIX) else None
    raise ProxyHeaderError("no PROXY protocol signature")


def acceptedAddresses(header: ProxyHeader, socketPeer, socketHost):
    """
    Apply the acceptance rules of the module docstring.

    @return: (peer, host) to expose to the wrapped protocol.
    @raise ProxyHeaderError: a header we refuse.
    """
    if header.command == "LOCAL":
        return socketPeer, socketHost
    if header.command != "PROXY" or header.family not in ("inet", "inet6"):
        raise ProxyHeaderError(
            f"{header.command} header with family {header.family}: no client IP"
        )
    if header.transport != "stream":
        raise ProxyHeaderError(f"transport {header.transport} is not TCP")
    return header.source, header.destination


@implementer(IHandshakeListener)
class ProxyProtocolWrapper(policies.ProtocolWrapper):
    """
    Reads the PROXY header of a trusted peer before the wrapped protocol
    exists; passes everything through for other peers.

    After STLS the TLS layer sits under this wrapper and reports its
    handshake here (L{IHandshakeListener}); L{handshakeCompleted} passes it
    on, so the session logs and counts the TLS facts as without a proxy.
    """

    wrappedProtocol = None

    def __init__(self, factory, addr):
        self.factory = factory
        self.socketAddress = addr
        self.proxyHeader = None
        self._peer = self._host = None
        self._proxyPeer = None
        self._buffer = b""
        self._timer = None
        self._closed = False

    def logPrefix(self):
        if self.wrappedProtocol is None:
            return self.__class__.__name__
        return super().logPrefix()

    def makeConnection(self, transport):
        directlyProvides(self, providedBy(transport))
        policies.Protocol.makeConnection(self, transport)

    def connectionMade(self):
        peer = self.transport.getPeer()
        if self.factory.isTrusted(peer):
            self._proxyPeer = peer
            self._timer = self.factory.clock.callLater(
                self.factory.headerTimeout, self._timedOut
            )
        else:
            self._startWrapped(peer, self.transport.getHost(), b"")

    def getPeer(self):
        """The real client: from the PROXY header, or the socket's peer."""
        return self._peer if self._peer is not None else self.transport.getPeer()

    def getHost(self):
        return self._host if self._host is not None else self.transport.getHost()

    def startTLS(self, contextFactory, *args, **kwargs):
        """
        STLS: start TLS on the real transport, then provide the interfaces
        it provides now (ISSLTransport), so C{ISSLTransport.providedBy}
        on this wrapper tells the truth after the handshake begins.
        """
        result = self.transport.startTLS(contextFactory, *args, **kwargs)
        directlyProvides(self, providedBy(self.transport))
        return result

    def handshakeCompleted(self):
        """The TLS handshake of STLS finished: tell the wrapped protocol."""
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def getProxyPeer(self):
        """The proxy's own address when a header was used, else L{None}."""
        return self._proxyPeer if self.proxyHeader is not None else None

    def _refuse(self, reason):
        self._closed = True
        self._cancelTimer()
        _log.warn(
            "access.proxy_header_refused peer={peer} reason={reason}",
            peer=str(_hostOf(self._proxyPeer) or self._proxyPeer), reason=reason,
        )
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    def _timedOut(self):
        self._timer = None
        self._refuse(f"no PROXY header within {self.factory.headerTimeout:g} s")

    def _cancelTimer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _startWrapped(self, peer, host, rest):
        self._peer, self._host = peer, host
        wrapped = self.factory.wrappedFactory.buildProtocol(peer)
        if wrapped is None:
            self._closed = True
            self.transport.loseConnection()
            return
        self.wrappedProtocol = wrapped
        self.factory.registerProtocol(self)
        wrapped.makeConnection(self)
        if rest and self.wrappedProtocol is not None and not (self._closed or self.disconnecting):
            wrapped.dataReceived(rest)

    def dataReceived(self, data):
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._closed:
            return
        self._buffer += data
        try:
            header = parseProxyHeader(self._buffer, self.factory.maxV2Payload)
            if header is None:
                return
            peer, host = acceptedAddresses(
                header, self.transport.getPeer(), self.transport.getHost()
            )
        except ProxyHeaderError as e:
            self._buffer = b""
            self._refuse(str(e))
            return
        self._cancelTimer()
        self.proxyHeader = header
        rest, self._buffer = self._buffer[header.length:], b""
        self._startWrapped(peer, host, rest)

    def connectionLost(self, reason):
        self._closed = True
        self._cancelTimer()
        if self.wrappedProtocol is not None:
            policies.ProtocolWrapper.connectionLost(self, reason)


def parseTrustedProxies(trustedProxies):
    """
    @param trustedProxies: CIDR strings (or single addresses).
    @return: a tuple of L{ipaddress} networks.
    @raise ValueError: not a list, or a bad network (naming it).
    """
    if isinstance(trustedProxies, (str, bytes)):
        raise ValueError("trustedProxies must be a list of networks")
    return tuple(
        ipaddress.ip_network(str(net).strip(), strict=True) for net in trustedProxies
    )


class ProxyProtocolFactory(policies.WrappingFactory):
    """
    Wrap a server factory so that peers in C{trustedProxies} must send a
    PROXY header (v1 or v2), read before the wrapped protocol is built.
    """

    protocol = ProxyProtocolWrapper
    noisy = False

    def __init__(
        self, wrappedFactory, trustedProxies, clock, headerTimeout=5.0,
        maxV2Payload=V2_DEFAULT_MAX_PAYLOAD,
    ):
        """
        @param wrappedFactory: the POP3 server factory.
        @param trustedProxies: CIDR strings (or single addresses) of the
            proxies allowed to send a PROXY header; may be empty.
        @param clock: IReactorTime for the header timeout.
        @param headerTimeout: seconds a trusted peer has to send its header.
        @param maxV2Payload: largest v2 payload (addresses + TLVs) accepted.
        @raise ValueError: a bad network in C{trustedProxies}.
        """
        super().__init__(wrappedFactory)
        self.trustedProxies = parseTrustedProxies(trustedProxies)
        self.clock = clock
        self.headerTimeout = headerTimeout
        self.maxV2Payload = maxV2Payload

    def isTrusted(self, address) -> bool:
        """Whether the socket peer C{address} may send a PROXY header."""
        host = _hostOf(address)
        if host is None:
            return False
        try:
            ip = normaliseAddress(host)
        except ValueError:
            return False
        return any(ip in net for net in self.trustedProxies)

    def setTrustedProxies(self, trustedProxies):
        """
        Replace the trusted list (a reload); connections accepted from now
        on follow it, open ones keep what they were given.

        @raise ValueError: a bad network; the list in force stays.
        """
        self.trustedProxies = parseTrustedProxies(trustedProxies)

    def buildProtocol(self, addr):
        if not self.trustedProxies:
            return self.wrappedFactory.buildProtocol(addr)
        return self.protocol(self, addr)
