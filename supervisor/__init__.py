"""syncwarden: a systemd-native supervisor for Cyrus IMAP replication."""

__version__ = "0.1.0"
