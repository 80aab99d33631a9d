"""
The contracts between securepop's layers.

A SASL mechanism never talks to LDAP; a credential source never parses POP3.
The protocol asks a mechanism for credentials, hands them to the portal, and
gets back a mailbox.  Each arrow in that sentence is one interface below.
"""

from zope.interface import Attribute, Interface
from twisted.mail.pop3 import IMailbox

# Credential kinds a source may serve and a mechanism may need (Dovecot's
# passdb "credentials schemes").  A configuration that enables a mechanism
# whose kind the source cannot serve stops the start.
PLAINTEXT = "plaintext"              # verify a password given in clear
NT_HASH = "nt-hash"                  # MD4(UTF-16LE(password)), 16 bytes
SCRAM_SHA_256 = "scram-sha-256"      # ScramSecret (salt, iterations, keys)
CLEARTEXT_SECRET = "cleartext-secret"  # APOP / CRAM-MD5 shared secret (bytes)
NTLM_DELEGATE = "ntlm-delegate"      # NTLM verified by a domain controller
KERBEROS = "kerberos"                # a service key (keytab) verifies the ticket

CREDENTIAL_KINDS = frozenset(
    {PLAINTEXT, NT_HASH, SCRAM_SHA_256, CLEARTEXT_SECRET, NTLM_DELEGATE, KERBEROS}
)


class ICredentialSource(Interface):
    """
    Where users and their secrets live (users file, OpenLDAP, AD).

    Every method returns a Deferred and never blocks the reactor thread.
    Failures: L{twisted.cred.error.UnauthorizedLogin} for "no such user / wrong
    password / account disabled" (the protocol shows one generic text), and
    L{securepop.errors.SourceUnavailable} when the source cannot answer now
    (the protocol answers C{-ERR [SYS/TEMP]}).

    A source may also offer C{userStamp(username) -> str}, a value that
    changes whenever that user's stored credentials do: the auth cache keys
    include it, so such a change takes effect at the next login (the users
    file has it; a directory source is trusted for the cache's TTL).
    """

    name = Attribute("Short name for logs: 'file', 'ldap', 'ad'.")

    def capabilities():
        """
        @return: frozenset of the credential kinds (module constants above)
            this source can serve.
        """

    def verifyPassword(username, password):
        """
        @type username: L{str} (already normalised)
        @type password: L{bytes}
        @return: Deferred firing with a L{securepop.auth.records.UserRecord}.
        """

    def lookupSecret(username, kind):
        """
        @param kind: one of the kinds in L{capabilities} other than PLAINTEXT.
        @return: Deferred firing with C{(UserRecord, secret)}; the secret's
            type depends on C{kind} (bytes for NT_HASH and CLEARTEXT_SECRET,
            L{securepop.auth.records.ScramSecret} for SCRAM_SHA_256).
        """

    def lookupUser(username):
        """
        @return: Deferred firing with the L{UserRecord} of a user who may log
            in (exists, enabled, in the required group), used after a
            delegated verification (NTLM through the domain controller).
        """


class ISecretCredentials(Interface):
    """
    Credentials proven against a stored secret (APOP, CRAM-MD5, NTLM).

    The checker fetches the secret of C{kind} for C{username} and asks the
    credentials to verify themselves, as Twisted's IUsernameHashedPassword.
    """

    username = Attribute("The normalised user name (str).")
    kind = Attribute("The credential kind needed.")

    def checkSecret(secret):
        """
        @return: L{bool}, computed in constant time.
        """


class IVerifiedCredentials(Interface):
    """
    Credentials that a mechanism has already verified during its exchange
    (SCRAM checks the client proof mid-exchange; NTLM via winbind is verified
    by the domain controller).  The checker still asks the source whether the
    user may log in.
    """

    username = Attribute("The normalised user name (str).")
    mechanism = Attribute("Name of the mechanism that verified them.")


class IBearerCredentials(Interface):
    """
    An OAuth 2.0 bearer token (OAUTHBEARER, XOAUTH2) for the checker to
    validate (L{securepop.auth.oauth2.BearerChecker}).
    """

    username = Attribute(
        "The normalised authorization identity the client named (str), or "
        "None: the token's user must equal it.")
    token = Attribute("The bearer token (str).")
    mechanism = Attribute("OAUTHBEARER or XOAUTH2.")
    failureChallenge = Attribute(
        "Bytes the server sends in a continuation when the token is refused "
        "(RFC 7628 section 3.2.2), before the final -ERR.")


class ISASLContext(Interface):
    """
    What a SASL exchange may know about its connection and ask of the
    credential source.
    """

    hostname = Attribute("server.hostname (str).")
    clock = Attribute("IReactorTime for timestamps.")
    secure = Attribute("True when the connection is under TLS now.")
    settings = Attribute("The securepop.config.AuthSettings in force.")

    def normaliseUsername(raw):
        """
        Apply the server's one user-name rule (L{securepop.auth.usernames}).

        @return: the normalised user name (str), or raise ValueError.
        """

    def lookupSecret(username, kind):
        """
        As L{ICredentialSource.lookupSecret}, for mechanisms that need the
        secret mid-exchange (SCRAM's salt and iteration count).
        """

    def channelBinding(kind):
        """
        @return: bytes of TLS channel binding data ('tls-exporter',
            'tls-server-end-point') or None.
        """

    def checkPolicy(username):
        """
        Refuse a user that policy refuses whatever the credentials (a
        lockout) before the mechanism proves anything to the client (a
        SCRAM server signature would confirm a guess during a lockout).

        @raise twisted.cred.error.UnauthorizedLogin: when refused.
        """

    def ntlmDelegate():
        """
        @return: a fresh L{securepop.sasl.ntlm.INTLMDelegate} (one NTLM
            exchange verified by the domain controller), or None when the
            server has none.
        """

    def gssapiAcceptor():
        """
        @return: a fresh L{securepop.sasl.gssapi.IGSSAcceptorExchange} (one
            Kerberos login checked with the keytab), or None when the server
            has no keytab.
        """


class ISASLMechanism(Interface):
    """
    One SASL mechanism (RFC 4422) as POP3 AUTH offers it (RFC 5034).
    """

    name = Attribute("The IANA name, e.g. 'PLAIN'.")
    exposesPassword = Attribute(
        "True when the password crosses the wire (base64 is not "
        "encryption): then it is offered and accepted only under TLS."
    )
    requires = Attribute("The credential kind it needs from the source.")

    def newExchange(context):
        """
        @type context: L{ISASLContext}
        @return: a fresh L{ISASLExchange} for one AUTH command.
        """


class ISASLExchange(Interface):
    """
    One AUTH exchange in progress.
    """

    def step(response):
        """
        Feed the client's next response.

        @param response: the decoded client response (bytes), or L{None} when
            the client sent no initial response with AUTH.
        @return: Deferred (or plain value) of either
            L{securepop.sasl.base.Challenge} (send C{+ base64(data)}) or an
            credentials object the portal understands
            (L{twisted.cred.credentials.IUsernamePassword},
            L{ISecretCredentials} or L{IVerifiedCredentials}).  Fails with
            L{securepop.errors.SASLError} for a malformed response.
        """

    username = Attribute(
        "The user name a failed exchange is charged to in the failure log, "
        "the penalty and the lockout (str), or None when the mechanism does "
        "not name one before its credentials (PLAIN, LOGIN, CRAM-MD5 hand "
        "theirs to the portal).")

    def abort():
        """
        The exchange ended before it finished (the client cancelled with
        C{*}, left, or a step failed): release whatever it holds (a domain
        controller helper).  A no-op when it holds nothing; idempotent.
        """


class ISecureMailbox(IMailbox):
    """
    A POP3 maildrop with RFC 1939 semantics.

    Extends Twisted's IMailbox (0-based indices; listMessages() gives 0 for
    deleted messages) with what a correct server needs.
    """

    def isDeleted(index):
        """
        @return: True when the message is marked deleted in this session.
        """

    def commit():
        """
        Remove (or move to trash) the marked messages: the UPDATE state.

        @return: Deferred firing when done.
        """

    def release():
        """
        Release the mailbox lock without removing anything.  Idempotent.
        """

    def hasOnlyCRLF(index):
        """
        @return: True when message C{index} is stored with CRLF line ends
            only, so RETR may skip the conversion pass; False when unsure
            (the message is then converted).
        """


class IAccessPolicy(Interface):
    """
    Decides, before the greeting, whether a client may connect.
    """

    def check(address):
        """
        @param address: the client's IP address (str).
        @return: Deferred firing with a L{securepop.access.rules.Decision}.
        """


class IStateStore(Interface):
    """
    What must be one across workers and nodes: connection slots, the
    failure penalty and its one-check-in-flight turn, the per-user lockout,
    the auth cache and (optionally) maildrop leases.

    Every method returns a Deferred and never blocks the reactor.  Times
    are wall-clock seconds (C{time.time()} on every node; nodes keep their
    clocks in step with NTP).  A backend answers within its timeout or
    fails with L{securepop.errors.StateUnavailable}; the caller's
    C{on_outage} policy decides what then.  Slots and turns are leases:
    the backend refreshes those this process holds (a heartbeat) and a
    process that dies without releasing them loses them within
    C{lease_ttl} seconds.
    """

    kind = Attribute("'memory', 'redis' or 'supervisor': named by check-config and logs")
    lease_ttl = Attribute("seconds a slot outlives the last heartbeat of its holder")

    def start():
        """Connect and start the heartbeat; Deferred fires when usable."""

    def stop():
        """Give back this process's slots and turns, stop the heartbeat."""

    # -- connection slots ----------------------------------------------------

    def acquire(lease, counts):
        """
        Take one slot in each counter of C{counts}, all or none, atomically.

        @param lease: a unique id of this slot holder (str), e.g.
            C{"<node>:<pid>:<n>"}; L{release} gives back what it holds.
        @param counts: a sequence of C{(scope, key, limit)}: scope is
            C{"total"}, C{"ip"} or C{"user"} (key C{"*"} for total), limit
            0 means unlimited (counted, never refused).
        @return: Deferred firing with None, or failing with
            L{securepop.access.limits.LimitExceeded} naming the first full
            counter (C{max_connections}, C{max_connections_per_ip},
            C{max_connections_per_user}); nothing is then taken.
        """

    def release(lease):
        """Give back every slot C{lease} holds (idempotent)."""

    def count(scope, key):
        """@return: Deferred firing with the live slots of one counter."""

    # -- failure penalty and lockout -------------------------------------------

    def login_state(address_key, username):
        """
        @return: Deferred firing with a L{securepop.state.LoginState}:
            the address's failures and last failure time, and the user's
            failures within the lockout window and the oldest of them
            (one round trip: read before every credentials check).
        """

    def record_failure(address_key, username, forget_after, window):
        """
        Count a failed check for the address (forgotten C{forget_after}
        seconds after its last failure) and for the user (each failure
        counts for C{window} seconds; C{username} may be None).

        @return: Deferred firing with the new L{securepop.state.LoginState}.
        """

    def record_success(address_key, username):
        """Clear the address's failures (and the user's failure count)."""

    def claim_turn(address_key, holder, ttl):
        """
        The one-check-in-flight rule of a penalised address, across nodes.

        @return: Deferred firing with True when C{holder} now holds the
            address's turn (for at most C{ttl} seconds), False when
            another holder has it.
        """

    def release_turn(address_key, holder):
        """Give the turn back if C{holder} still holds it."""

    # -- auth cache ---------------------------------------------------------------

    def cache_get(key):
        """@return: Deferred firing with the bytes stored under C{key} (an HMAC), or None."""

    def cache_put(key, value, ttl):
        """Store C{value} (bytes, never a password) under C{key} for C{ttl} seconds."""

    def cache_forget(key):
        """Drop C{key}."""

    # -- maildrop leases ----------------------------------------------------------

    def acquire_maildrop(username, holder):
        """
        @return: Deferred firing with True when C{holder} now holds the
            user's maildrop lease (refreshed by the heartbeat), False when
            another holder has it.
        """

    def release_maildrop(username, holder):
        """Give the maildrop lease back if C{holder} still holds it."""
