"""``python -m lidarlift.synth --out DIR ...``"""
import sys

from lidarlift.synth.cli import main

sys.exit(main())
