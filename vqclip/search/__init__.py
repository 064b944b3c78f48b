"""Search across runs: the store-wide embedding index and text or image queries against it."""
