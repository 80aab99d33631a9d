"""
Every text securepop sends, in one place: nothing else reaches a client.

Response codes are RFC 2449 / RFC 3206: [AUTH] for credential problems and
TLS-required refusals, [SYS/TEMP] for "try later", [SYS/PERM] for "never",
[IN-USE] for a locked maildrop.
"""

UNKNOWN_COMMAND = b"-ERR Unknown command"
BAD_SYNTAX = b"-ERR Syntax error in arguments"
LINE_TOO_LONG = b"-ERR Line too long"
NO_SUCH_MESSAGE = b"-ERR No such message"
MESSAGE_DELETED = b"-ERR Message already deleted"
NOT_NOW = b"-ERR Command not valid in this state"
ALREADY_LOGGED_IN = b"-ERR Already authenticated"
TLS_REQUIRED = b"-ERR [AUTH] Authentication requires TLS: use STLS first"
MECHANISM_UNAVAILABLE = b"-ERR [AUTH] Authentication mechanism not available"
LOGIN_FAILED = b"-ERR [AUTH] Authentication failed"
AUTH_CANCELLED = b"-ERR [AUTH] Authentication cancelled"
AUTH_MALFORMED = b"-ERR [AUTH] Malformed authentication data"
SOURCE_UNAVAILABLE = b"-ERR [SYS/TEMP] Authentication service unavailable, try again later"
IN_USE = b"-ERR [IN-USE] Mailbox is locked by another session"
TOO_MANY_SESSIONS = b"-ERR [IN-USE] Too many sessions for this user"
INTERNAL = b"-ERR [SYS/TEMP] Temporary server error"
TOO_MANY_ERRORS = b"-ERR [SYS/PERM] Too many errors, closing connection"
TOO_MANY_ATTEMPTS = b"-ERR [AUTH] Too many failed attempts, closing connection"
TOO_MANY_CONNECTIONS = b"-ERR [SYS/TEMP] Too many connections, try again later"
TIMEOUT = b"-ERR [SYS/TEMP] Idle timeout, closing connection"
SHUTTING_DOWN = b"-ERR [SYS/TEMP] Server shutting down"
STLS_NOT_AVAILABLE = b"-ERR STLS not available"
STLS_READY = b"+OK Begin TLS negotiation"
USER_PASS_DISABLED = b"-ERR USER/PASS authentication is disabled"
APOP_DISABLED = b"-ERR APOP is disabled"
COMMIT_FAILED = b"-ERR [SYS/TEMP] Some deleted messages were not removed"
