"""Security: redaction of secrets (and, later, API keys and the outbound address guard)."""
