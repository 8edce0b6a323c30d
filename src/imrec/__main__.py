from imrec.cli import main

raise SystemExit(main())
