"""What providers and people send back to Herald: receipts, acknowledgements, commands."""
