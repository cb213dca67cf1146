"""The inversion loop every backend shares: the ``Backend`` interface it drives, settings and presets, slots,
optimisers, batch-invariant arithmetic, starts, restarts, work sources and the live queue. Imports no backend,
no calibration and no method."""
