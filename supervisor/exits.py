"""Exit codes of every ``syncwarden`` command (docs/CONTRACT.md), in one place.

Most commands use the first three. The ones monitoring runs follow the Nagios plugin
convention instead, where 2 means CRITICAL, not a usage error: ``status`` (0 every link that
should run is live and nothing is quarantined, 1 not so, 2 usage, 3 no daemon answered),
``status --nagios`` and ``check`` (OK, WARNING, CRITICAL, UNKNOWN; a usage or configuration
error is UNKNOWN there).
"""

EXIT_OK = 0        # fine: in sync, done, or nothing to do
EXIT_PROBLEM = 1   # a problem was found, or the request was refused
EXIT_USAGE = 2     # usage, configuration or credentials error
EXIT_UNREACHABLE = 3   # status: no daemon answered (not running, or this user may not ask)

# The Nagios plugin convention (status --nagios, check).
NAGIOS_OK = 0
NAGIOS_WARNING = 1
NAGIOS_CRITICAL = 2
NAGIOS_UNKNOWN = 3
NAGIOS_NAMES = {NAGIOS_OK: "OK", NAGIOS_WARNING: "WARNING", NAGIOS_CRITICAL: "CRITICAL",
                NAGIOS_UNKNOWN: "UNKNOWN"}

# check: what the comparison found.
CHECK_IN_SYNC = NAGIOS_OK            # no divergence (differences still queued are lag)
CHECK_DIFFERENCES = NAGIOS_CRITICAL  # master and replica differ
CHECK_INCOMPLETE = NAGIOS_UNKNOWN    # a side or user unreadable; usage, config, credentials
