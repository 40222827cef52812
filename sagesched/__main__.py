from sagesched.cli import main

raise SystemExit(main())
