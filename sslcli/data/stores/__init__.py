"""The HDF5 region store and the digests that name its inputs."""
