"""The ``qvl`` command: one parser; each subcommand imports what it needs when it runs."""
