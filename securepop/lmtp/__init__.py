"""
LMTP (RFC 2033): the MTA hands mail to securepop's Maildirs
(L{securepop.lmtp.server}), one file per recipient, within the quotas
(L{securepop.lmtp.delivery}, L{securepop.mailstore.quota}).
"""
