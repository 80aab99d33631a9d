"""
The self-audit engine behind C{securepop audit}: the administrator's
"How to confirm" checklist (connection control, cleartext exposure, STLS,
TLS, authentication) as one repeatable command against any POP3 server.
"""

from securepop.audit.engine import Audit, AuditOptions
from securepop.audit.judge import FAIL, INFO, PASS, WARN, AuditResult, Finding
from securepop.audit.pop3client import Target, parseURL
from securepop.audit.report import exitStatus, formatJSON, formatText, verdict

__all__ = [
    "Audit", "AuditOptions", "AuditResult", "Finding", "PASS", "WARN", "FAIL",
    "INFO", "Target", "parseURL", "exitStatus", "formatJSON", "formatText",
    "verdict",
]
