"""Crash injection for the crash-at-every-step tests.

Each step of every transition calls crashpoint("TRANSITION.STEP") right after its
filesystem operation. With QUEUECTL_CRASH_AT=POINT in the environment the process dies
there at once (os._exit, no clean-up, like kill -9 or a power cut for everything not yet
synced); "POINT#N" dies at the Nth time the point is reached. Unset, a call costs one
comparison. tests/test_crash_points.py finds every point in the source, so a new step
without coverage fails the test.
"""
import os

EXIT_CODE = 86
_AT = os.environ.get("QUEUECTL_CRASH_AT") or None
_POINT, _, _NTH = (_AT or "").partition("#")
_seen = 0


def crashpoint(point):
    global _seen
    if _AT is not None and point == _POINT:
        _seen += 1
        if _seen >= int(_NTH or 1):
            os._exit(EXIT_CODE)
