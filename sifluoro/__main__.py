import sys

from sifluoro.cli import main

sys.exit(main())
