"""Optional coordination of pairs and fleets through etcd (SPEC: Coordination).

Imported only when ``coordination:`` is configured (settings.py aside).
"""
