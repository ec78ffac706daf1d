from snnl.cli import main

raise SystemExit(main())
