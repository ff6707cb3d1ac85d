"""`python -m vpfb ...` (and `torchrun --nproc_per_node=N -m vpfb train ...`) is the `vpfb` command."""

from vpfb.cli import main

raise SystemExit(main())
