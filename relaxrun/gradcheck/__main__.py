"""``python -m relaxrun.gradcheck``: the same as ``relaxrun-gradcheck``."""

from .cli import main

raise SystemExit(main())
