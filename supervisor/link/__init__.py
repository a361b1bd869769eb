"""One link's life: the state table, the reconcile tick, drains, the quarantine workflow, roles, and the status built from them."""
