"""The operator console in the browser (README, "Console"): ``views`` serves it."""
