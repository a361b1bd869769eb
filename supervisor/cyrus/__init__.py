"""Everything syncwarden knows about Cyrus: imapd.conf, the sync log grammar and files, sync_client's command lines and log lines, the sync protocol probe."""

# The account Cyrus runs as, and so every unit that runs sync_client (User=cyrus).
CYRUS_USER = "cyrus"
