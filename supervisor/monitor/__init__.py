"""Monitoring: Prometheus metrics, status exit codes and the Nagios view."""
