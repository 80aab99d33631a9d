"""
One user's migration, and the comparison behind C{--verify}.

L{migrate} lists the source, skips every UIDL the target already has,
records the rest as pending, fetches and stores them in the source's order,
saves the kept UIDLs, and only then (with C{delete_source}) deletes on the
source what is safely here.  It is incremental (a second run fetches only
what is new) and resumable (a failure leaves what was stored kept, and the
rest to the next run).
"""

import time
from dataclasses import asdict, dataclass, field

from securepop.mailstore import uidlist

SAVE_EVERY = 5.0  # seconds between uidlist saves during a long run


@dataclass
class Report:
    """What one user's run did; C{asdict} is the C{--json} form."""

    user: str
    source: str
    listed: int = 0
    fetched: int = 0
    bytes: int = 0
    already: int = 0
    deleted_on_source: int = 0
    refused: list = field(default_factory=list)       # [(uidl repr, reason)]
    size_mismatches: list = field(default_factory=list)
    unlisted: list = field(default_factory=list)
    differences: list = field(default_factory=list)   # --verify
    seconds: float = 0.0
    error: str = None

    def as_dict(self):
        return asdict(self)


class NullProgress:
    """The progress interface: L{start} with totals, L{advance} per message."""

    def start(self, messages, octets):
        pass

    def advance(self, octets):
        pass

    def close(self):
        pass


def screen(listing, report):
    """
    Drop the messages whose UIDL RFC 1939 forbids or that repeat an earlier
    UIDL (a client could not tell them apart): each goes to
    C{report.refused}.

    @return: the messages to migrate, in order.
    """
    seen, keep = set(), []
    for message in listing:
        if not uidlist.valid_uidl(message.uidl):
            report.refused.append([repr(message.uidl)[:100],
                                   "UIDL is not 1-70 printable characters"])
        elif message.uidl in seen:
            report.refused.append([message.uidl, "UIDL repeated by the source"])
        else:
            seen.add(message.uidl)
            keep.append(message)
    return keep


def migrate(source, target, report, delete_source=False, progress=None, clock=time.monotonic,
            listing=None):
    """
    Move what C{source} has and C{target} lacks.

    @param listing: C{source.listing()} when already read (before the
        target was opened, so a source that cannot list changes nothing).

    @raise SourceError: the source failed (L{securepop.migrate.pop3}); what was
        stored stays kept.
    """
    progress = progress or NullProgress()
    started = clock()
    try:
        if listing is None:
            listing = source.listing()
        report.unlisted = list(source.unlisted)
        report.listed = len(listing)
        messages = screen(listing, report)
        known = target.known()
        todo = [m for m in messages if m.uidl not in known]
        report.already = len(messages) - len(todo)
        planned = dict(target.plan([m.uidl for m in todo]))
        progress.start(len(todo), sum(m.size or 0 for m in todo))
        for message in todo:
            data = source.fetch(message)
            size = target.store(planned[message.uidl], data)
            if message.size is not None and not same_size(message.size, size):
                report.size_mismatches.append([message.uidl, message.size, size])
            report.fetched += 1
            report.bytes += len(data)
            progress.advance(len(data))
            target.save(every=SAVE_EVERY)
        target.save()
        if delete_source:
            stored = target.known()
            doomed = [m for m in messages if m.uidl in stored]
            source.delete(doomed)
            report.deleted_on_source = len(doomed)
    finally:
        try:
            target.save()
        finally:
            progress.close()
            report.seconds = round(clock() - started, 3)
    return report


def same_size(theirs, ours):
    """
    Whether a LIST size here matches the old server's for the same message:
    equal, or 2 more for a message without a final line end (the old server
    did not count the CRLF its RETR added; securepop counts the CRLF it
    sends, and the octets of RETR are the same).
    """
    return ours == theirs or ours == theirs + 2


def served_listing(mailbox):
    """
    @param mailbox: an open L{securepop.mailstore.maildir.MaildirMailbox}.
    @return: C{[(uidl str, size)]} as a login to securepop sees them.
    """
    sizes = mailbox.listMessages()
    return [(mailbox.getUidl(i).decode("ascii"), size) for i, size in enumerate(sizes)]


def compare(source_listing, served):
    """
    @param source_listing: the source's L{SourceMessage}s.
    @param served: L{served_listing}'s pairs.
    @return: lines naming each difference (empty when the two agree:
        same UIDLs, same order, same sizes where the source gives one).
    """
    differences = []
    theirs = [m.uidl for m in source_listing]
    ours = [uidl for uidl, _ in served]
    their_set, our_set = set(theirs), set(ours)
    differences += [f"only on the source: {uidl}" for uidl in theirs if uidl not in our_set]
    differences += [f"only here: {uidl}" for uidl in ours if uidl not in their_set]
    if [u for u in theirs if u in our_set] != [u for u in ours if u in their_set]:
        differences.append("the common messages are in another order")
    sizes = dict(served)
    for m in source_listing:
        if m.size is not None and m.uidl in sizes and not same_size(m.size, sizes[m.uidl]):
            differences.append(f"size of {m.uidl}: {m.size} on the source, "
                               f"{sizes[m.uidl]} here")
    return differences
