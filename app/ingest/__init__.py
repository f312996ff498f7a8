"""Events in: Redis Streams consumed by consumer groups, and the Alertmanager receiver."""
