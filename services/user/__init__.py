"""The user service: accounts, profile updates and the active-user check."""
