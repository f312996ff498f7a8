"""The chaos suite: real Herald processes, a throwaway PostgreSQL cluster, faults on purpose."""
