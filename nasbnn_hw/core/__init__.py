"""The method's vocabulary: search spaces (TOML), architectures and their JSON/official forms, ND-uniform
sampling, layer configs and exact OPs. Depends on nothing else in the package."""
