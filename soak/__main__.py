"""`python -m soak`: the chaos soak of `prosody-lastlog serve`."""

from soak.run import main

raise SystemExit(main())
