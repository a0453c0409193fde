"""Where the data comes from: the plan, the file store, SQL databases; they return records or counts, never metrics."""
