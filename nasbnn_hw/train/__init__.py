"""Training the supernet with the Bi-Teacher sandwich rule (one or many processes), fine-tuning one subnet,
BN recalibration and evaluation."""
