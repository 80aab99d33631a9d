"""
The POP3 session states (RFC 1939 section 3), as the session and the
server context compare them.

Commands are read only in AUTHORIZATION and TRANSACTION; UPDATE lasts while
QUIT removes the marked messages; CLOSED follows the end of the connection
or a closing reply.
"""

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"
UPDATE = "UPDATE"
CLOSED = "CLOSED"

#: The states in which a command line is read and dispatched.
READING = (AUTHORIZATION, TRANSACTION)
