import sys

from vkvtrain.cli import main

sys.exit(main())
