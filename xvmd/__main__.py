from xvmd.cli import main

raise SystemExit(main())
