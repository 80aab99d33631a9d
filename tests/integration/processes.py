"""Small helpers shared by the fixtures that run real servers."""

import subprocess


def terminate(process, timeout=5):
    """SIGTERM, wait, then SIGKILL: a fixture's server never outlives it."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
