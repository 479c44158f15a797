"""overlayfuse with a deliberate bug, for the test that the differential harness catches
one: removing a name never leaves a whiteout, so the lower version shows through again."""

from overlayfuse.cli import main
from overlayfuse.tree import Tree

Tree.lower_positive = lambda self, parent, name: False  # type: ignore[method-assign]

raise SystemExit(main())
