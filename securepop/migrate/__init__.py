"""
C{securepop migrate}: move a user's mail from another POP3 server (or
another server's Maildir) into securepop, keeping every message's UIDL and
the old order, byte for byte, so clients that leave mail on the server do
not download it all again.

 - L{securepop.migrate.pop3}: a small blocking POP3 client (STLS or
   implicit TLS, verified certificates);
 - L{securepop.migrate.sources}: where the mail comes from: a POP3 server,
   or a Dovecot or Courier Maildir with its C{dovecot-uidlist} or
   C{courierpop3dsizelist};
 - L{securepop.migrate.target}: the user's Maildir here, its lock and its
   kept UIDLs (L{securepop.mailstore.uidlist});
 - L{securepop.migrate.engine}: one user's run (incremental, resumable)
   and the comparison behind C{--verify}.

Blocking throughout: a command-line tool, never run on the daemon's
reactor.
"""
