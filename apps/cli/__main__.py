"""``python -m apps.cli``: the ``fleet`` command."""

from apps.cli.main import main

raise SystemExit(main())
