"""Generated multi-object scenes: the synthetic data set and the planted-feature scenes of the studies."""
