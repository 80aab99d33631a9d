"""
The self-audit engine behind C{securepop audit}: the administrator's
"How to confirm" checklist (connection control, cleartext exposure, STLS,
TLS, authentication) as one repeatable command against any POP3 server.
"""

from securepop.audit.engine import (
    FAIL,
    INFO,
    PASS,
    WARN,
    Audit,
    AuditOptions,
    AuditResult,
    Finding,
)
from securepop.audit.pop3client import Target, parseURL
from securepop.audit.report import exitStatus, formatJSON, formatText, verdict

__all__ = [
    "Audit", "AuditOptions", "AuditResult", "Finding", "PASS", "WARN", "FAIL",
    "INFO", "Target", "parseURL", "exitStatus", "formatJSON", "formatText",
    "verdict",
]
