"""The daemon's descriptor budget: the soft ``RLIMIT_NOFILE`` raised toward the hard one.

The collectors keep descriptors open between samples because a pread on a kept one costs
a fraction of an open/read/close (three per process for the process collector, one per
cgroup file, the per-second /proc files): budgets they size from the soft limit. A shell
gives 1,024, where a thousand processes alone would want 3,000, and the sockets of
websocket clients come out of the same limit. The hard limit is the administrator's (the
systemd unit sets 65,536); raising the soft one up to it needs no privilege, and is what
the Go runtime does for every program since 1.19.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("hostscope.daemon")

#: Soft limit asked for (at most the hard limit): the systemd unit's LimitNOFILE.
TARGET_NOFILE = 65536


def raise_nofile(target: int = TARGET_NOFILE) -> int:
    """Raise the soft RLIMIT_NOFILE to ``target`` or the hard limit, whichever is lower
    (never lower it); the soft limit in force afterwards. Call before the collectors and
    the privileged helper are made: they size their budgets from it, and the helper
    inherits it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:  # a sandbox refusing it: keep what we have
            log.warning("cannot raise the open files limit",
                        extra={"soft": soft, "hard": hard, "error": str(exc)})
            return soft
        log.info("open files limit raised", extra={"from": soft, "to": want})
        return want
    return soft
