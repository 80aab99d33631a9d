"""
The heap a long-running server starts with, out of the garbage collector's way.

CPython's cyclic collector walks every tracked object of the process in a
full collection: after start-up that is Twisted, pyOpenSSL, the
configuration and securepop itself, ~75,000 objects, about 10 ms of one
core (gc.collect() on the built server, measured here) during which no
session is served.  None of them ever becomes garbage, so once the server
is built they go to the permanent generation (C{gc.freeze}, as Instagram's
and Dropbox's Python servers do): a full collection then walks only what
sessions, the auth cache and later imports made.  The polling benchmark
showed no p99 change from it at 133 logins/s: it bounds a pause, it is not
a speed-up.
"""

from __future__ import annotations

import gc as _gc

from securepop import events


def freeze_startup_heap(gc=_gc):
    """
    Collect once, then move every object alive into the permanent
    generation.  Called by the process that runs the server (twistd's
    root, each worker), never by a library embedding it: freezing is a
    decision for the whole process.

    @return: how many objects were frozen.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    events.emit("heap.frozen", objects=frozen)
    return frozen
