"""What chats send Herald: Telegram's ``getUpdates`` loop, the commands, the inbound log."""
