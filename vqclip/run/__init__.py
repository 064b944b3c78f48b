"""A run in its store: key layout, records, commits, shard execution with its recovery rules, zoom videos,
progress, background uploads, scoring, embeddings and reports. Built on the engine; never imports Prefect."""
