"""The `syncwarden` command line and what only it needs (the worker units' ExecStart among them)."""
