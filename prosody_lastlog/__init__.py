"""prosody-lastlog: daily, weekly and monthly active users from Prosody's last-activity data."""

__version__ = "0.1.0"
