"""The weight-sharing binary supernet (Weight Normalization, Bi-Transformation, the FP teacher path), static
subnets extracted from it, and safe checkpoint loading (ours and the official NAS-BNN files)."""
