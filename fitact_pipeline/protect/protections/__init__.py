"""One module per protection: its bounded activation and its ``register_protection`` entry.

Every module here is imported by ``protect.registry`` at start-up."""
