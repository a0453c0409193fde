"""`python -m prosody_lastlog` runs the command-line tool."""

from prosody_lastlog.cli import main

raise SystemExit(main())
