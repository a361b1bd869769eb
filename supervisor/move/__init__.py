"""User moves between Cyrus stores (docs/moves.md): the workflow, its edges, its state files."""
