"""`python -m nasbnn_hw.cli ...` (as torchrun runs it) is `nasbnn-hw ...`."""
import sys

from nasbnn_hw.cli import main

sys.exit(main())
