from qlite.cli import main

raise SystemExit(main())
