"""`python -m metaiqa` (also what `torchrun -m metaiqa` runs)."""

from metaiqa.cli import main

raise SystemExit(main())
