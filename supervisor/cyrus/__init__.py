"""Everything syncwarden knows about Cyrus: imapd.conf, the sync log grammar and files, sync_client's command lines and log lines, the sync protocol probe."""
