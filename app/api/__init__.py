"""HTTP routers only: no SQL and no delivery logic here."""
