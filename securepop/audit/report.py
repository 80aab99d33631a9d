"""
The audit's output: one line per check and a one-line verdict, or JSON.
"""

import json

from securepop.audit.judge import FAIL, INFO, PASS, WARN

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_DECLINED = 3   # the server declined us: nothing else could be audited


def counts(findings):
    """@return: dict status -> number of findings with it."""
    result = {PASS: 0, WARN: 0, FAIL: 0, INFO: 0}
    for finding in findings:
        result[finding.status] += 1
    return result


def exitStatus(result):
    """
    @return: 1 when any check FAILed, 3 when the connection was declined
        (and nothing failed), else 0.
    """
    if any(f.status == FAIL for f in result.findings):
        return EXIT_FAIL
    if result.declined:
        return EXIT_DECLINED
    return EXIT_OK


def verdict(result):
    """
    @return: the one-line verdict.
    """
    failed = [f.check for f in result.findings if f.status == FAIL]
    warned = [f.check for f in result.findings if f.status == WARN]
    if failed:
        return f"FAIL: {len(failed)} check(s) failed: {', '.join(failed)}"
    if result.declined:
        source = result.sourceAddress or "this host"
        return f"DECLINED: the server declined connections from {source}; nothing else was audited"
    if warned:
        return f"PASS with {len(warned)} warning(s): {', '.join(warned)}"
    return "PASS: no check failed"


def targetText(target):
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{target.scheme}://{host}:{target.port}"


def _clean(text):
    """One printable line: a hostile server cannot draw on the terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def formatText(result):
    """
    @return: the readable report (str), ending with the verdict line.
    """
    lines = [f"securepop audit of {targetText(result.target)}"]
    width = max((len(f.check) for f in result.findings), default=10)
    for finding in result.findings:
        lines.append(f"{finding.status:<4}  {finding.check:<{width}}  {_clean(finding.reason)}")
    c = counts(result.findings)
    lines.append(f"{c[PASS]} pass, {c[WARN]} warn, {c[FAIL]} fail, {c[INFO]} info")
    lines.append(f"Verdict: {verdict(result)}")
    return "\n".join(lines) + "\n"


def toDict(result):
    return {
        "target": targetText(result.target),
        "source_address": result.sourceAddress,
        "declined": result.declined,
        "verdict": verdict(result),
        "exit_status": exitStatus(result),
        "counts": counts(result.findings),
        "findings": [
            {"check": f.check, "status": f.status, "reason": f.reason}
            for f in result.findings
        ],
    }


def formatJSON(result):
    return json.dumps(toDict(result), indent=2) + "\n"
