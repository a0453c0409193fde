"""The chaos soak of `prosody-lastlog serve` (`make soak`; see soak/README.md)."""
