"""What providers and people send back to Herald: receipts, acknowledgements, and what chats
send its bots (Telegram's ``getUpdates`` loop, the commands, the inbound log)."""
