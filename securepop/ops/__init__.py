"""
Running securepop for real: what an administrator needs around the server.

 - L{notify}: systemd readiness (READY, RELOADING, STOPPING) over NOTIFY_SOCKET;
 - L{privileges}: bind as root, then run as C{server.user};
 - L{protolog}: the protocol log, credentials redacted, reopened on SIGHUP;
 - L{metrics}: Prometheus counters and the C{[metrics] endpoint};
 - L{jsonlog}: twisted.logger events as JSON lines;
 - L{shutdown}: SIGTERM lets sessions in flight finish within a grace period;
 - L{workers}: C{workers = N}: one supervisor, N processes sharing the sockets.

L{securepop.service} (one serving process) and L{securepop.assembly} (what
twistd runs) compose them around L{securepop.service.SecurePOPService}; an
embedding application may use any of them on its own.
"""
