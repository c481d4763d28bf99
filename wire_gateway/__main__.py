from wire_gateway.cli import main

raise SystemExit(main())
