"""
The TRANSACTION and UPDATE states (RFC 1939 sections 5 and 6): the
maildrop commands, RETR/TOP streaming, and QUIT, which removes the marked
messages and only then releases the lock.
"""

from __future__ import annotations

import re

from twisted.internet import defer

from securepop import events
from securepop.protocol import responses as R
from securepop.protocol.commands import command
from securepop.protocol.states import CLOSED, READING, TRANSACTION, UPDATE
from securepop.protocol.streaming import MessageProducer

_NUMBER = re.compile(rb"^[0-9]{1,10}$")


class TransactionCommands:
    """
    The commands of the TRANSACTION state and QUIT, mixed into
    L{securepop.protocol.session.POP3Session} (which provides C{ctx},
    C{sendLine}, C{_wait}, C{_bad_command}, the timers and the reply
    producer).
    """

    def _init_transaction(self):
        self.mailbox = None
        self._logout = None
        self._sizes = []
        self._producer = None       # the message being streamed (RETR/TOP)
        self._retrieved = self._deleted = self._bytes = 0

    def _open_mailbox(self, mailbox, logout):
        self.mailbox = mailbox
        self._logout = logout

    def _list_messages(self):
        """The message sizes at login: the session's view for its lifetime."""
        self._sizes = self.mailbox.listMessages()
        return self._sizes

    def _release_mailbox(self):
        """
        @return: a Deferred firing when a shared maildrop lease is given
            back too (C{lock = "redis"}), or None when the release is done.
        """
        released = None
        mailbox, self.mailbox = self.mailbox, None
        if mailbox is not None:
            try:
                released = mailbox.release()
            except Exception:
                events.emit("mailbox.release_failed", "error", user=self.username)
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()
        return released if isinstance(released, defer.Deferred) else None

    def _message(self, arg, allow_deleted=False):
        """Message index (0-based) from a 1-based argument, or None after -ERR."""
        if not _NUMBER.match(arg):
            self._bad_command(R.BAD_SYNTAX)
            return None
        n = int(arg)
        count = len(self._sizes)
        if not 1 <= n <= count:
            self.sendLine(R.NO_SUCH_MESSAGE)
            return None
        if not allow_deleted and self.mailbox.isDeleted(n - 1):
            self.sendLine(R.MESSAGE_DELETED)
            return None
        return n - 1

    # -- commands -----------------------------------------------------------------

    @command("STAT", TRANSACTION)
    def do_STAT(self):
        live = [s for i, s in enumerate(self._sizes) if not self.mailbox.isDeleted(i)]
        self.sendLine(b"+OK %d %d" % (len(live), sum(live)))

    def _listing(self, args, value):
        if args:
            i = self._message(args[0])
            if i is not None:
                self.sendLine(b"+OK %d %s" % (i + 1, value(i)))
            return
        lines = [b"+OK"]
        for i in range(len(self._sizes)):
            if not self.mailbox.isDeleted(i):
                lines.append(b"%d %s" % (i + 1, value(i)))
        lines.append(b".")
        self.sendLines(lines)

    @command("LIST", TRANSACTION, arity=(0, 1))
    def do_LIST(self, *args):
        self._listing(args, lambda i: b"%d" % self._sizes[i])

    @command("UIDL", TRANSACTION, arity=(0, 1))
    def do_UIDL(self, *args):
        self._listing(args, self._uidl)

    def _uidl(self, i):
        uid = self.mailbox.getUidl(i)
        return uid.encode("ascii") if isinstance(uid, str) else uid

    @command("DELE", TRANSACTION, arity=(1, 1))
    def do_DELE(self, arg):
        i = self._message(arg)
        if i is not None:
            self.mailbox.deleteMessage(i)
            self._deleted += 1
            self.sendLine(b"+OK Message %d deleted" % (i + 1))

    @command("RSET", TRANSACTION)
    def do_RSET(self):
        self.mailbox.undeleteMessages()
        self._deleted = 0
        self.sendLine(b"+OK")

    @command("NOOP", TRANSACTION)
    def do_NOOP(self):
        self.sendLine(b"+OK")

    @command("RETR", TRANSACTION, arity=(1, 1))
    def do_RETR(self, arg):
        i = self._message(arg)
        if i is not None:
            self._retrieved += 1
            return self._stream(i, b"+OK %d octets" % self._sizes[i], None)

    @command("TOP", TRANSACTION, arity=(2, 2))
    def do_TOP(self, arg, lines):
        if not _NUMBER.match(lines):
            self._bad_command(R.BAD_SYNTAX)
            return
        i = self._message(arg)
        if i is not None:
            return self._stream(i, b"+OK", int(lines))

    @command("QUIT", READING)
    def do_QUIT(self):
        if self.state != TRANSACTION:
            self.sendLine(b"+OK Bye")
            self._close()
            return
        if self._gone or self.transport.disconnecting:
            return None     # no +OK can reach the client: no UPDATE either
        self.state = UPDATE
        self._cancel_timer()
        self._busy = True
        d = defer.maybeDeferred(self.mailbox.commit)

        # The lock is held until the deletions are done, even when the client
        # has gone meanwhile (connectionLost leaves it to us); it is released
        # before "+OK" so a client that reconnects at once does not meet its
        # own session's lock ([IN-USE]).
        def committed(_):
            return released(self._release_mailbox(), b"+OK Bye")

        def failed(f):
            events.emit("mailbox.commit_failed", "error", user=self.username,
                        error=f.getErrorMessage())
            return released(self._release_mailbox(), R.COMMIT_FAILED)

        def released(lease, reply):
            # A maildrop lease is given back before the reply as well (one
            # store round trip, bounded by its timeout, never failing).
            if lease is not None:
                return lease.addCallback(lambda _: released(None, reply))
            if self.state != CLOSED:
                self.sendLine(reply)

        d.addCallbacks(committed, failed)
        d.addBoth(lambda _: None if self.state == CLOSED else self._close())
        return d

    # -- streaming ----------------------------------------------------------------

    def _stream(self, index, first, top_lines):
        try:
            f = self.mailbox.getMessage(index)
        except (OSError, IndexError) as e:
            events.emit("mailbox.read_failed", "error", user=self.username, error=str(e))
            self.sendLine(b"-ERR [SYS/TEMP] Message could not be read")
            return None
        self.sendLine(first)
        # One producer at a time per transport: the message, then the replies.
        self._stop_producing_replies()
        producer = MessageProducer(f, self.transport, top_lines, onProgress=self._reset_timer,
                                   crlf=bool(self.mailbox.hasOnlyCRLF(index)))
        self._producer = producer
        d = producer.start()

        def sent(n):
            self._bytes += n

        def lost(f):
            if self._producer is producer:
                # Stopped by the transport, not by us: the connection is
                # going, and the DELE/QUIT pipelined behind this RETR must
                # never run.
                self._transport_gone()
            return None

        def done(_):
            self._producer = None
            self._produce_replies()

        d.addCallbacks(sent, lost)
        d.addBoth(done)
        return self._wait(d)

    def _stop_message(self):
        """Stop streaming a message now (the session is closing)."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            producer.stopProducing()
            self.transport.unregisterProducer()
