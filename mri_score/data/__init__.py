"""Data: the synthetic brain corpus, the k-space simulator's helpers and training datasets."""
