"""Training data: the unified record format, dataset readers, the synthetic world, caption embeddings."""
