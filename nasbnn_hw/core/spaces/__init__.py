"""The search spaces shipped with nasbnn-hw (TOML files)."""
