"""Channel types: one adapter per provider protocol, registered by type name."""
