"""What the commands do, as library functions: search a trained supernet under cost constraints, and the
quickstart (the whole journey on the embedded data)."""
