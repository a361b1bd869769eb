"""The systemd edge: unit names and D-Bus, sd_notify, writing and following the journal."""
