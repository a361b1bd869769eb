"""Reading and changing both sides of a master/replica pair over IMAP: check, repair, failover."""
