"""
Helpers for tests of securepop and of applications that embed it (as
ldaptor's C{testutil}): shipped with the package, never imported by the
daemon.

 - L{tls}: a throwaway CA, identities written to files, in-memory TLS
   handshakes, the chain a server serves for a name.
 - L{pop3}: the complete wire form of a message (RETR and TOP).
 - L{ntlm}: the client's NTLM messages (NEGOTIATE, AUTHENTICATE).
"""
