"""Data: the synthetic leaf generator, source importers, prepare/split, datasets, transforms, loaders."""
