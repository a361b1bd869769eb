"""Exit codes of every ``syncwarden`` command (docs/CONTRACT.md), in one place."""

EXIT_OK = 0        # fine: in sync, done, or nothing to do
EXIT_PROBLEM = 1   # a problem was found, or the request was refused
EXIT_USAGE = 2     # usage, configuration or credentials error
