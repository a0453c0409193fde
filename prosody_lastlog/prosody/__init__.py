"""What Prosody writes and how to ask it: its config, its data files and names, the running server, the install."""
